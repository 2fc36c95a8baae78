"""What every entry point shares: the one-line usage error, the parser that raises it, flag
parsing helpers, and a headless matplotlib. A leaf: it imports nothing of the project."""
import argparse


class UsageError(Exception):
    """Bad input: the CLI prints the message on one line and exits 2."""


class Parser(argparse.ArgumentParser):
    """An argparse parser whose errors are UsageErrors, so that main() prints them as one
    `error:` line (argparse's own error() prints the usage block and exits)."""

    def __init__(self, prog, doc, **kw):
        super().__init__(prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter, **kw)

    def error(self, message):
        raise UsageError(message)


def choice(value, allowed, flag):
    if value not in allowed:
        raise UsageError(f"{flag} {value!r} is not one of: {', '.join(allowed)}")
    return value


def split_list(text, allowed, flag, aliases=None):
    """'a,b,a' -> ['a', 'b'] (aliases mapped, repeats dropped, order kept); UsageError when an
    item is not allowed or the list is empty."""
    items = []
    for s in (t.strip() for t in text.split(",")):
        if s:
            s = (aliases or {}).get(s, s)
            if s not in items:
                items.append(s)
    bad = [s for s in items if s not in allowed]
    if bad or not items:
        raise UsageError(f"{flag}: unknown {', '.join(bad) or 'empty list'}; choose from {', '.join(allowed)}")
    return items


def int_list(text, flag, example):
    """'4,1,2,2' -> [1, 2, 4]; UsageError unless every item is a whole number >= 1."""
    try:
        values = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise UsageError(f"{flag}: give comma-separated whole numbers, e.g. {example}") from None
    if not values or min(values) < 1:
        raise UsageError(f"{flag}: give whole numbers of at least 1, e.g. {example}")
    return sorted(set(values))


def headless_pyplot():
    """matplotlib.pyplot drawing to files only (the Agg backend: no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
