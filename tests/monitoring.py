"""The README's metrics table, read back, and scraped /metrics text checked against it.

The table in README.md ("Monitoring") is the contract: each row names a metric, its type, its
labels and the process that serves it. Unit tests compare it with the metric objects the code
defines; the integration test with what real processes serve after a job.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

README = Path(__file__).resolve().parents[1] / "README.md"
_ROW = re.compile(r"^\| `(sluice_\w+)` \| (counter|gauge|histogram) \| ([^|]*) \| (worker|exporter|api|scheduler) \|")


@dataclass(frozen=True)
class Documented:
    name: str
    type: str
    labels: frozenset[str]
    source: str


def documented_metrics(readme: Path = README) -> dict[str, Documented]:
    """The metrics table of the README, by metric name (``_total`` included for counters)."""
    found = {}
    for line in readme.read_text(encoding="utf-8").splitlines():
        match = _ROW.match(line)
        if match:
            name, kind, labels, source = match.groups()
            found[name] = Documented(name, kind, frozenset(re.findall(r"`(\w+)`", labels)), source)
    return found


def served(text: str) -> dict[str, tuple[str, frozenset[str], int]]:
    """``sluice_*`` families in exposition ``text``: name as documented -> (type, label names, samples)."""
    found = {}
    for family in text_string_to_metric_families(text):
        if not family.name.startswith("sluice_"):
            continue
        name = family.name + "_total" if family.type == "counter" else family.name
        labels = frozenset(k for s in family.samples for k in s.labels if k != "le")
        found[name] = (family.type, labels, len(family.samples))
    return found


def mismatches(docs: dict[str, Documented], texts: dict[str, str]) -> list[str]:
    """What differs between the documented metrics and those served, per source (``texts``: source -> text)."""
    problems = []
    by_source = {source: served(text) for source, text in texts.items()}
    for doc in docs.values():
        if doc.source not in by_source:
            continue
        got = by_source[doc.source].get(doc.name)
        if got is None:
            problems.append(f"{doc.name}: documented for {doc.source}, not served there")
        elif got[0] != doc.type or got[1] != doc.labels or not got[2]:
            problems.append(f"{doc.name}: documented {doc.type} {sorted(doc.labels)}, served {got[0]} "
                            f"{sorted(got[1])} with {got[2]} samples")  # fmt: skip
    for source, families in by_source.items():
        for name in families:
            if name not in docs or docs[name].source != source:
                problems.append(f"{name}: served by {source}, not documented for it")
    return problems
