"""Reading a registry the way Prometheus does."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families


def value(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    """The sample ``name{labels}``, as a scrape of ``registry`` shows it (None: absent)."""
    return registry.get_sample_value(name, labels)


def scraped(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of an exposition text, by name and sorted labels."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def exposition(registry: CollectorRegistry) -> str:
    return generate_latest(registry).decode()
