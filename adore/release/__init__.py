"""ADORE itself (Adaptive Token Release): the policy, its controller, labels, training, sparse
fine-tune and artifacts. It uses only the public core API (``from adore import ...``)."""
