"""Sphinx extension: the reference list in author–year form, like the citations.

The chapters cite author–year (``bibtex_reference_style: author_year``: "Chen et al. (2024)"), but
pybtex's formatting styles label the list with numbers ([1], [2], ...).  This registers the pybtex
style ``lidbook_authoryear`` (``bibtex_default_style`` in ``_config.yml``): pybtex's ``plain``
entries, sorted by first author, year and title, labelled "Chen et al., 2024" (one or two authors by
name; a letter a, b, ... tells apart equal labels).
"""
from __future__ import annotations

from collections import Counter

from pybtex.plugin import register_plugin
from pybtex.style.formatting.plain import Style as PlainStyle
from pybtex.style.labels import BaseLabelStyle
from pybtex.style.sorting import BaseSortingStyle

STYLE = "lidbook_authoryear"


def _who(entry) -> str:
    persons = entry.persons.get("author") or entry.persons.get("editor") or []
    last = [" ".join(p.last_names) for p in persons]
    if not last:
        return entry.fields.get("organization") or entry.fields.get("title", entry.key).split(":")[0]
    if len(last) == 1:
        return last[0]
    if len(last) == 2:
        return f"{last[0]} and {last[1]}"
    return f"{last[0]} et al."


class AuthorYearLabels(BaseLabelStyle):
    def format_labels(self, sorted_entries):
        entries = list(sorted_entries)
        base = [f"{_who(e)}, {e.fields.get('year', 'n.d.')}" for e in entries]
        count, seen = Counter(base), Counter()
        for label in base:
            if count[label] > 1:
                seen[label] += 1
                label = f"{label}{'abcdefghijklmnopqrstuvwxyz'[seen[label] - 1]}"
            yield label


class FirstAuthorYear(BaseSortingStyle):
    """Sorted as the labels read: first author (et al.), year, title."""

    def sorting_key(self, entry):
        return (_who(entry).lower(), entry.fields.get("year", ""), entry.fields.get("title", "").lower())


class AuthorYearStyle(PlainStyle):
    default_label_style = STYLE
    default_sorting_style = STYLE


def setup(app):
    register_plugin("pybtex.style.labels", STYLE, AuthorYearLabels)
    register_plugin("pybtex.style.sorting", STYLE, FirstAuthorYear)
    register_plugin("pybtex.style.formatting", STYLE, AuthorYearStyle)
    return {"version": "1.0", "parallel_read_safe": True, "parallel_write_safe": True}
