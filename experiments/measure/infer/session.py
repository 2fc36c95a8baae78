"""The inference benchmark from its flags to its rows: every selected configuration at every
batch size, measured or recorded as skipped / failed with its reason, appended to the CSVs as
it goes."""
import datetime
import os

import numpy as np

from ...cli import UsageError
from .plan import CHECK_IMAGES, CPU_PRECISIONS, TOLERANCE, Probe, configurations, short_error, why_not
from .runners import make_runner, reference_logits, reference_state
from .table import COLUMNS, KEY_COLUMNS, LATENCY_COLUMNS, CsvSink, latencies_path, make_row, print_row
from .timing import measure

def run(args, rows, log=print):
    """Run every selected configuration, appending each row (a dict of CSV fields) to `rows` and
    to the CSV as it is measured; returns the run id."""
    probe = Probe()
    numba_rows = "scratch" in args.impls and "numba" in args.backends and "eager" in args.engines and \
        any(p in CPU_PRECISIONS for p in args.precisions)
    if numba_rows and not probe.numba:
        from scratch_nn.backends.threads import start_numba_before_torch

        # numba's own OpenMP pool, started before anything imports torch (which loads its own)
        start_numba_before_torch(max(args.threads))
    cfgs = configurations(args, probe, log=log)
    if not cfgs:
        raise UsageError("nothing to run: no selected target has the selected precisions and engines (CPU targets "
                      "take fp64/fp32 and eager/compile/onnxruntime; GPU targets fp32/tf32/fp16/bf16 and "
                      "eager/compile/cuda-graph; compile and onnxruntime are torch engines)")
    sink = CsvSink(args.csv, COLUMNS)
    lat_sink = CsvSink(latencies_path(args.csv), LATENCY_COLUMNS)
    sink.start()
    lat_sink.start()

    have_torch = probe.torch is None
    if have_torch:
        from ...train.adapters import set_torch_threads

        set_torch_threads(max(args.threads))

    from ...record.sysinfo import machine_info

    info = machine_info(0 if probe.gpu else None)
    cpu_name = info.get("cpu_model") or "unknown CPU"
    gpu_name = info.get("gpu_name") or "unknown GPU"
    now = datetime.datetime.now()
    base = dict(run_id=f"{now:%Y%m%dT%H%M%S}-{os.getpid()}-{os.urandom(2).hex()}", date=now.date().isoformat(), warmup="", iters="")
    rng = np.random.default_rng(args.seed)
    pool = rng.standard_normal((max(args.batch_sizes), 3, 32, 32)).astype(np.float32)
    states, refs = {}, {}
    n = len(cfgs) * len(args.batch_sizes)
    log(f"{n} rows: {len(cfgs)} configurations x {len(args.batch_sizes)} batch sizes; warm-up {args.warmup}, "
        f"{args.iters} iterations, at most {args.max_time:g} s each; CPU: {cpu_name}"
        + (f"; GPU: {gpu_name}" if probe.gpu else ""))
    for cfg in cfgs:
        machine = gpu_name if cfg.gpu else cpu_name
        written = []
        reason = why_not(cfg, probe)
        if reason:
            written = [make_row(cfg, b, base, machine, "skipped", reason) for b in args.batch_sizes]
        else:
            if cfg.model not in states:
                states[cfg.model] = reference_state(cfg.model, args.seed)
                if have_torch:
                    refs[cfg.model] = reference_logits(cfg.model, states[cfg.model], pool[:CHECK_IMAGES])
            state = states[cfg.model]
            if cfg.precision == "fp64":
                state = {k: (v.astype(np.float64) if v.dtype == np.float32 else v) for k, v in state.items()}
            try:
                runner = make_runner(cfg, state, args.seed)
            except Exception as e:
                from scratch_nn.backends import BackendUnavailable

                status = "skipped" if isinstance(e, BackendUnavailable) else "failed"
                written = [make_row(cfg, b, base, machine, status, f"setup: {short_error(e)}") for b in args.batch_sizes]
                runner = None
            if runner is not None:
                lat_rows = []
                for b in args.batch_sizes:
                    try:
                        res = measure(runner, pool[:b], args, cfg.gpu, refs.get(cfg.model), TOLERANCE[cfg.precision])
                    except Exception as e:
                        row = make_row(cfg, b, base, machine, "failed", short_error(e))
                    else:
                        if "error" in res:
                            row = make_row(cfg, b, base, machine, "failed", res["error"], res)
                        else:
                            row = make_row(cfg, b, base, machine, "ok", "", res)
                            h2d = res["h2d"]
                            lat_rows += [dict({c: row[c] for c in KEY_COLUMNS}, run_id=base["run_id"], iteration=i,
                                              latency_ms=f"{v * 1e3:.4f}",
                                              h2d_ms=f"{h2d[i] * 1e3:.4f}" if i < len(h2d) else "")
                                         for i, v in enumerate(res["latencies"])]
                    sink.write([row])
                    print_row(len(rows) + 1, n, row, log)
                    rows.append(row)
                runner.close()
                lat_sink.write(lat_rows)
                continue
        sink.write(written)
        for row in written:
            print_row(len(rows) + 1, n, row, log)
            rows.append(row)
    return base["run_id"]
