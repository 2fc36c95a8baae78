"""Repeats of one measurement (the seeds of a study row) summarised, and two rows' figures
judged against their spread (design rule 9: a difference inside the spread is noise)."""
import statistics

PAR = 0.03   # with no spread measured (one seed a side), ratios within 3% of 1 read "on par"


def mean_std(values):
    """(mean, sample standard deviation, n) of the values that are not None; the deviation is
    None below two values: one seed measures no spread."""
    vs = [float(v) for v in values if v is not None]
    if not vs:
        return None, None, 0
    return sum(vs) / len(vs), (statistics.stdev(vs) if len(vs) > 1 else None), len(vs)


def judge(a, b, key):
    """How record a's mean `key` stands against record b's, as (verdict, spread_measured).
    verdict: 'higher' | 'lower' | 'noise' (both rows measured a spread, `key`_std, and their means
    lie within the sum of the two standard deviations) | 'par' (no spread on a side, and within
    PAR of each other) | None (a figure missing). With no spread measured a difference is said,
    but never as one beyond the noise: spread_measured says which."""
    va, vb = a.get(key), b.get(key)
    if not va or not vb:
        return None, False
    sa, sb = a.get(f"{key}_std"), b.get(f"{key}_std")
    spread = sa is not None and sb is not None
    if spread and abs(va - vb) <= sa + sb:
        return "noise", True
    if not spread and abs(va / vb - 1) < PAR:
        return "par", False
    return ("higher" if va > vb else "lower"), spread


def pm(mean, std, fmt):
    """'1,234 ± 12' (the mean alone where no spread was measured)."""
    return fmt(mean) + (f" ± {fmt(std)}" if std is not None else "")
