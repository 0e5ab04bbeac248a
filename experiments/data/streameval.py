"""``dataset=streameval``: StreamEval, StreamingLLM's streaming question answering (Xiao et al., ICLR
2024, §4.3), never released, generated here from its description. Seeded; no external data.

The stream is LongEval's line-retrieval record: lines ``line i: REGISTER_CONTENT is <n>`` with ``n``
a random 5-digit number. After every ``query_every`` lines comes a query for the line ``distance``
lines back (``line i - distance`` after line ``i``), phrased so that the answer is the number
alone::

    Question: what is the REGISTER_CONTENT of line 12?
    Answer: line 12: REGISTER_CONTENT is <

Each query is one :class:`Sample`: ``fields["text"]`` is the stream since the previous query (the
lines, then the query), ``answer`` the number of the queried line, ``fields["line"]`` its index.
Concatenating the samples' texts in order gives the whole stream (``task=streameval`` adds the
model's answers between them). The information asked for is always ``distance`` lines back, while
the stream grows without bound: a cache policy answers correctly as long as it keeps those lines.
"""

from __future__ import annotations

import random

from adore import ConfigError

from . import Sample, register_dataset

HEADER = (
    "Below is a record of lines I want you to remember. Each line begins with 'line <line index>' and "
    "contains a '<REGISTER_CONTENT>' at the end of the line as a numerical value. For each line index, "
    "memorize its corresponding <REGISTER_CONTENT>. From time to time I will ask you for the "
    "<REGISTER_CONTENT> of a line. Now the record starts:\n\n"
)
LINE = "line {index}: REGISTER_CONTENT is <{value}>\n"
QUERY = "\nQuestion: what is the REGISTER_CONTENT of line {index}?\nAnswer: line {index}: REGISTER_CONTENT is <"
AFTER_ANSWER = "\n\n"  # ends the model's answer line before the record goes on


@register_dataset("streameval", task="streameval", description="streaming line-retrieval QA (StreamingLLM)")
def load_streameval(n_lines: int = 200, query_every: int = 10, distance: int = 20, seed: int = 0) -> list[Sample]:
    for key, value in (("n_lines", n_lines), ("query_every", query_every), ("distance", distance)):
        if value <= 0:
            raise ConfigError(f"dataset.{key} must be a positive integer, got {value}")
    first_query = (distance // query_every + 1) * query_every  # the first line i with i - distance >= 1
    if n_lines < first_query:
        raise ConfigError(
            f"dataset.n_lines={n_lines} gives no query: the first comes after line {first_query} "
            f"(query_every={query_every}, distance={distance}); raise dataset.n_lines"
        )
    rng = random.Random(seed)
    values = [rng.randrange(10_000, 100_000) for _ in range(n_lines + 1)]  # values[i]: line i (1-based)
    samples, text = [], HEADER
    for index in range(1, n_lines + 1):
        text += LINE.format(index=index, value=values[index])
        if index % query_every == 0 and index - distance >= 1:
            asked = index - distance
            fields = {"text": text + QUERY.format(index=asked), "line": str(asked)}
            samples.append(Sample(f"line-{asked}", fields, str(values[asked]), answer=str(values[asked])))
            text = AFTER_ANSWER
    return samples
