"""Moved: the registry is :mod:`adore.core.registry`, the catalog :mod:`adore.methods`; this path works for one more release."""

from adore.core.registry import register_method  # noqa: F401
from adore.methods import available_methods, build_policy, method_class  # noqa: F401
