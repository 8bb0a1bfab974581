#!/usr/bin/env python3
"""Accuracy table runner: quantizes the benchmark models with every method through the sageptq CLI, evaluates
perplexity, caches each finished step as JSON under bench/results/accuracy/ and regenerates the markdown table and
the SVG chart (report.py). Standard library only. Usage: see bench/accuracy.sh or `run.py --help`.

A run is (model, configuration, calibration seed). Its quantized model is written once to the ignored work folder
(.accuracy/ at the repository root) and evaluated on several token sets; every evaluation is cached on its own, so
a quick pass (first 40 windows) and a full pass share the quantized model and an interrupted run resumes.

Validation: the CLI draws calibration windows from the first 90% of the calibration file only (the library's
window_options.validation_fraction = 0.1); this script writes the last 10% as its own token file (.accuracy/data/)
and evaluates on it as the "val" set. Choose hyperparameters and defaults on "val", never on heldout / WikiText-2.
"""

import argparse
import concurrent.futures
import datetime
import glob
import json
import os
import platform
import re
import shlex
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)
import report  # noqa: E402

VALIDATION_FRACTION = 0.1  # must match sageptq::pipeline::window_options::validation_fraction

# --- what is measured --------------------------------------------------------------------------------------------

MODELS = {
    "gutenberg": {
        "dir": "models/gutenberg-llama-20m",
        "calib": "data/gutenberg/calib.u16.bin",
        # eval set name -> token file ("val" is the validation tail of the calibration file)
        "evals": {"heldout": "data/gutenberg/heldout.u16.bin",
                  "wikitext": "data/wikitext-2-raw/wiki.test.gut4k.u16.bin",
                  "val": None},
        "full": ["heldout", "wikitext", "val"],
        "quick": ["heldout@40", "val@40"],
    },
    "stories": {
        "dir": "models/stories260k",
        "calib": "data/tinystories/calib.tok512.u16.bin",
        "evals": {"eval": "data/tinystories/eval.tok512.u16.bin", "val": None},
        "full": ["eval", "eval@40", "val"],
        "quick": ["eval", "eval@40", "val"],
    },
}

SAGE_BUDGETS = [1.05, 1.1, 1.25, 1.5, 2.0, 2.5]
TOGA_BUDGETS = [1.0, 1.1, 1.25, 1.5, 2.0]  # one CLI call serves all of them (one profiling pass)


def configurations():
    """name -> (method, extra CLI arguments). Order is the table's order."""
    out = {"fp": (None, []),
           "rtn1": ("rtn", ["--bits", "1"]),
           "q1_0": ("q1_0", []),
           "billm": ("billm", []),
           "gptq2-g128": ("gptq", ["--bits", "2", "--group", "128"]),
           "gptq2": ("gptq", ["--bits", "2", "--group", "0"]),
           "gptq3-g128": ("gptq", ["--bits", "3", "--group", "128"]),
           "gptq3": ("gptq", ["--bits", "3", "--group", "0"]),
           "septq2": ("septq", ["--bits", "2"]),
           "septq3": ("septq", ["--bits", "3"])}
    for b in SAGE_BUDGETS:
        out["sage@%g" % b] = ("sage", ["--target-bpw", "%g" % b])
    for b in TOGA_BUDGETS:
        out["toga@%g" % b] = ("toga", ["--target-bpw", "%g" % b])
    return out


CONFIGS = configurations()
CALIBRATED = {name for name, (method, _) in CONFIGS.items() if method not in (None, "rtn", "q1_0")}
# Headline rows: run with every seed of --seeds (the others with the first seed only).
HEADLINE = {"billm", "gptq2", "septq2", "sage@1.1", "sage@1.5", "sage@2", "toga@1.1"}
GROUPS = {"all": list(CONFIGS),
          "baselines": [c for c in CONFIGS if not c.startswith(("sage", "toga"))],
          "reference": ["billm", "gptq2", "gptq3", "septq2", "septq3"],
          "sage": [c for c in CONFIGS if c.startswith("sage")],
          "toga": [c for c in CONFIGS if c.startswith("toga")],
          "headline": sorted(HEADLINE)}

# --- helpers -----------------------------------------------------------------------------------------------------

_print_lock = threading.Lock()


def log(*args):
    with _print_lock:
        print(time.strftime("%H:%M:%S"), *args, flush=True)


def machine():
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    return "%s (%s, %d cpus)" % (os.environ.get("ACCURACY_MACHINE", platform.node()), cpu, os.cpu_count() or 0)


_cli_ids = {}
_batch_locks = {}  # (model, seed) -> lock: one toga quantize call at a time per model and seed


def cli_id(path):
    """The CLI binary's identity: the first 12 hex digits of its SHA-256 (cached results say which build made them)."""
    if path not in _cli_ids:
        import hashlib
        with open(path, "rb") as f:
            _cli_ids[path] = hashlib.sha256(f.read()).hexdigest()[:12]
    return _cli_ids[path]


def write_json_atomic(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp%d" % os.getpid()
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1, sort_keys=False)
        f.write("\n")
    os.replace(tmp, path)


def validation_file(shared, work, model):
    """The last VALIDATION_FRACTION of the calibration file as its own token file (same cut as the library)."""
    src = os.path.join(shared, MODELS[model]["calib"])
    dst = os.path.join(work, "data", model + ".val.u16.bin")
    with open(src, "rb") as f:
        data = f.read()
    n = len(data) // 2
    begin = n - int(n * VALIDATION_FRACTION)
    tail = data[2 * begin:]
    if not (os.path.exists(dst) and os.path.getsize(dst) == len(tail)):
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        with open(dst + ".tmp", "wb") as f:
            f.write(tail)
        os.replace(dst + ".tmp", dst)
    return dst


def run_command(cmd, logfile):
    """Runs cmd (a list), stderr (progress bars) to logfile; returns (stdout, seconds). Raises on failure."""
    start = time.time()
    os.makedirs(os.path.dirname(logfile), exist_ok=True)
    with open(logfile, "a") as err:
        err.write("\n$ %s\n" % " ".join(shlex.quote(c) for c in cmd))
        err.flush()
        p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=err, text=True)
    if p.returncode != 0:
        raise RuntimeError("exit %d: %s (see %s)" % (p.returncode, " ".join(cmd), logfile))
    return p.stdout, time.time() - start


# --- one run: quantize once, evaluate on every requested set ------------------------------------------------------

class Run:
    def __init__(self, args, model, config, seed):
        self.args, self.model, self.config, self.seed = args, model, config, seed
        self.method, self.extra = CONFIGS[config]
        tag = ("-" + args.tag) if args.tag else ""
        self.id = config + tag + ("" if self.method is None else ("-s%d" % seed if config in CALIBRATED else ""))
        self.cache = os.path.join(args.results, model, self.id.replace("@", "_") + ".json")
        self.qfile = os.path.join(args.work, "models", model, self.id.replace("@", "_") + ".safetensors")
        self.logfile = os.path.join(args.work, "logs", model + "-" + self.id.replace("@", "_") + ".log")
        self.record = {}
        self.reload()

    def reload(self):
        if os.path.exists(self.cache):
            with open(self.cache) as f:
                self.record = json.load(f)

    def shared(self, rel):
        return os.path.join(self.args.shared, rel)

    def unreachable(self):
        """The budget is below the smallest configuration the method can store for this model (recorded, not
        retried: rerun with --force after a change that could make it fit)."""
        return "unreachable" in self.record.get("quantize", {})

    def missing(self, evals):
        return [] if self.unreachable() else [e for e in evals if e not in self.record.get("evals", {})]

    def save(self):
        # Another process (a second runner, --merge) may have added evaluations meanwhile: keep them.
        if os.path.exists(self.cache):
            with open(self.cache) as f:
                on_disk = json.load(f)
            self.record["evals"] = dict(on_disk.get("evals", {}), **self.record.get("evals", {}))
        self.record.update({"model": self.model, "config": self.config, "seed": self.seed, "tag": self.args.tag,
                            "method": self.method})
        write_json_atomic(self.cache, self.record)

    def quantized(self):
        return "quantize" in self.record and (self.unreachable() or os.path.exists(self.qfile))

    def quantize(self, batch=()):
        """Quantizes this run. toga: one CLI call for this run and the toga runs `batch` of the same model and
        seed (one profiling pass serves every budget); each run then records the shared call."""
        runs = [self] + [r for r in batch if r is not self and not r.quantized()]
        cfg = MODELS[self.model]
        os.makedirs(os.path.dirname(self.qfile), exist_ok=True)
        report_path = self.qfile[:-len(".safetensors")] + ".report.json"
        extra, out_path = self.extra, self.qfile
        if len(runs) > 1:  # the CLI writes FILE-{bpw} per budget ("%g", as ours); renamed to each run's paths below
            extra = ["--target-bpw", ",".join(r.extra[1] for r in runs)] + self.extra[2:]
            out_path = self.qfile[:-len(".safetensors")] + "-batch{bpw}.safetensors"
        report_of = lambda path: path[:-len(".safetensors")] + ".report.json"  # noqa: E731
        cmd = [self.args.cli, "quantize", "--model", self.shared(cfg["dir"]), "--method", self.method] + extra
        if self.config in CALIBRATED:
            cmd += ["--calib", self.shared(cfg["calib"]), "--calib-windows", str(self.args.calib_windows),
                    "--seed", str(self.seed)]
        cmd += ["--threads", str(self.args.threads), "--out", out_path, "--report", report_of(out_path)]
        log("quantize", self.model, ",".join(r.id for r in runs))
        try:
            out, seconds = run_command(cmd, self.logfile)
        except RuntimeError:
            with open(self.logfile) as f:
                last = (f.read().strip().splitlines() or [""])[-1]
            m = re.search(r"no \S+ configuration fits .* smallest reachable is (\S+)", last)
            if len(runs) > 1 or not m:
                raise
            self.record["quantize"] = {"unreachable": last, "smallest_full_bpw": float(m.group(1)),
                                       "command": " ".join(cmd), "cli_sha256": cli_id(self.args.cli),
                                       "machine": machine(), "date": now()}
            self.save()
            log("  %s %s: does not fit (smallest reachable %s full bpw)" % (self.model, self.id, m.group(1)))
            return
        for r in runs:
            if len(runs) > 1:
                made = out_path.replace("{bpw}", "%g" % float(r.extra[1]))
                os.replace(made, r.qfile)
                os.replace(report_of(made), report_of(r.qfile))
            with open(report_of(r.qfile)) as f:
                totals = json.load(f)["totals"]
            r.record["quantize"] = {"command": " ".join(cmd), "cli_sha256": cli_id(self.args.cli),
                                    "machine": machine(), "date": now(),
                                    "seconds": round(seconds, 2), "stdout": out.strip(),
                                    "calib_windows": self.args.calib_windows if self.config in CALIBRATED else None,
                                    "full_bpw": totals["full_bpw"], "paper_bpw": totals["paper_bpw"],
                                    "bits": totals["bits"]}
            if len(runs) > 1:
                r.record["quantize"]["batch_budgets"] = len(runs)
            r.save()

    def evaluate(self, name):
        cfg = MODELS[self.model]
        base, _, windows = name.partition("@")
        tokens = cfg["evals"][base]
        tokens = self.args.val_files[self.model] if tokens is None else self.shared(tokens)
        cmd = [self.args.cli, "eval"]
        cmd += ["--model", self.shared(cfg["dir"])] if self.method is None else ["--quantized", self.qfile]
        cmd += ["--tokens", tokens, "--threads", str(self.args.threads)]
        if windows:
            cmd += ["--max-windows", windows]
        log("eval", self.model, self.id, name)
        out, seconds = run_command(cmd, self.logfile)
        last = out.strip().splitlines()[-1]
        m = re.fullmatch(r"ppl=(\S+) full_bpw=(\S+) paper_bpw=(\S+) windows=(\d+)", last)
        if not m:
            raise RuntimeError("unexpected eval output: " + last)
        self.record.setdefault("evals", {})[name] = {
            "ppl": float(m.group(1)), "full_bpw": float(m.group(2)), "paper_bpw": float(m.group(3)),
            "windows": int(m.group(4)), "seconds": round(seconds, 2), "command": " ".join(cmd),
            "cli_sha256": cli_id(self.args.cli),
            "machine": machine(), "date": now()}
        if self.method is None:
            self.record["quantize"] = {"full_bpw": float(m.group(2)), "paper_bpw": float(m.group(3))}
        self.save()
        log("  %s %s %s: ppl=%s (%.0f s)" % (self.model, self.id, name, m.group(1), seconds))

    def execute(self, evals, batch=()):
        todo = self.missing(evals)
        if not todo:
            return
        if self.method == "toga":  # the first of a batch quantizes all of it; the others find their files
            with _batch_locks.setdefault((self.model, self.seed, tuple(self.extra[2:])), threading.Lock()):
                self.reload()
                if not self.quantized():
                    self.quantize(batch)
        elif self.method is not None and not self.quantized():
            self.quantize()  # deterministic: the same CLI, options and seed give the same file on any machine
        for e in self.missing(evals):
            self.evaluate(e)


def now():
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def merge(source, results):
    """Adds the evaluations cached under `source` (a results folder from another machine, e.g. the device) to
    `results`, keeping what `results` has already."""
    for path in sorted(glob.glob(os.path.join(source, "*", "*.json"))):
        with open(path) as f:
            theirs = json.load(f)
        target = os.path.join(results, os.path.basename(os.path.dirname(path)), os.path.basename(path))
        ours = {}
        if os.path.exists(target):
            with open(target) as f:
                ours = json.load(f)
        added = [e for e in theirs.get("evals", {}) if e not in ours.get("evals", {})]
        merged = dict(theirs, **ours)
        merged["evals"] = dict(theirs.get("evals", {}), **ours.get("evals", {}))
        write_json_atomic(target, merged)
        log("merged", target, "added:", ",".join(added) or "nothing")


def expand(items, groups):
    out = []
    for item in items.split(","):
        for x in groups.get(item, [item]):
            if x not in out:
                out.append(x)
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="configurations: " + " ".join(CONFIGS) + "\ngroups: " + " ".join(GROUPS))
    p.add_argument("--quick", action="store_true", help="first 40 windows of gutenberg (heldout, val) + stories260k, one seed")
    p.add_argument("--models", default="stories,gutenberg", help="comma list of: " + ", ".join(MODELS))
    p.add_argument("--configs", default="all",
                   help="comma list of configurations or groups (see below); sage@X or toga@X for any budget X, "
                        "togaN@X with N input-channel blocks per linear")
    p.add_argument("--evals", default=None,
                   help="comma list of eval sets, NAME or NAME@WINDOWS (heldout, wikitext, eval, val); "
                        "default: each model's full (or --quick) list")
    p.add_argument("--seeds", default=None,
                   help="calibration seeds for headline rows, the others use the first (default 0,1,2; --quick: 0)")
    p.add_argument("--calib-windows", type=int, default=128)
    p.add_argument("--tag", default="", help="suffix for run ids (variants of the code; cached separately)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--jobs", type=int, default=1, help="runs at a time (each with --threads threads)")
    fast_cli = os.path.join(ROOT, ".accuracy", "bin", "sageptq")  # bench/accuracy.sh --build
    p.add_argument("--cli", default=fast_cli if os.path.exists(fast_cli) else os.path.join(ROOT, "build", "bin", "sageptq"))
    p.add_argument("--shared", default=os.path.join(os.path.dirname(ROOT), "shared"))
    p.add_argument("--results", default=os.path.join(ROOT, "bench", "results", "accuracy"))
    p.add_argument("--work", default=os.path.join(ROOT, ".accuracy"), help="quantized models, logs (ignored)")
    p.add_argument("--report-only", action="store_true", help="only regenerate accuracy.md / accuracy.svg")
    p.add_argument("--merge", metavar="DIR", help="add the cached runs of another results folder, then report")
    p.add_argument("--no-report", action="store_true")
    p.add_argument("--force", action="store_true", help="forget the selected runs' cache and quantize again")
    p.add_argument("--dry-run", action="store_true", help="list the runs and their missing evals")
    args = p.parse_args()

    models = expand(args.models, {})
    configs = expand(args.configs, GROUPS)
    seeds = [int(s) for s in (args.seeds or ("0" if args.quick else "0,1,2")).split(",")]
    for m in models:
        if m not in MODELS:
            p.error("unknown model " + m)
    for c in configs:
        budget = re.fullmatch(r"(sage|toga)([0-9]?)@([0-9.]+)", c)
        if budget and c not in CONFIGS and (budget.group(1) == "toga" or not budget.group(2)):
            # any budget of a budgeted method; togaN@X: N input-channel blocks per linear (--column-blocks)
            CONFIGS[c] = (budget.group(1), ["--target-bpw", budget.group(3)] +
                          (["--column-blocks", budget.group(2)] if budget.group(2) else []))
            CALIBRATED.add(c)
        if c not in CONFIGS:
            p.error("unknown configuration " + c)

    if args.merge:
        merge(args.merge, args.results)
    elif not args.report_only:
        if not os.access(args.cli, os.X_OK):
            p.error("no CLI at %s (build it: cmake --build build --target sageptq_cli, or pass --cli)" % args.cli)
        args.val_files = {m: validation_file(args.shared, args.work, m) for m in models}
        runs = []
        for m in models:
            evals = args.evals.split(",") if args.evals else MODELS[m]["quick" if args.quick else "full"]
            evals = [e for e in evals if e.partition("@")[0] in MODELS[m]["evals"]]
            for c in configs:
                for s in (seeds if c in HEADLINE else seeds[:1]):
                    r = Run(args, m, c, s)
                    if args.force and not args.dry_run:
                        for path in (r.cache, r.qfile):
                            if os.path.exists(path):
                                os.remove(path)
                        r.record = {}
                    if r.missing(evals):
                        runs.append((r, evals))
        for r, evals in runs:
            log("todo", r.model, r.id, ",".join(r.missing(evals)))
        batches = {}  # toga runs of one model and seed share one quantize call
        for r, _ in runs:
            if r.method == "toga":  # one batch per model, seed and options other than the budget
                batches.setdefault((r.model, r.seed, tuple(r.extra[2:])), []).append(r)
        if not args.dry_run:
            failures = []
            with concurrent.futures.ThreadPoolExecutor(max_workers=args.jobs) as pool:
                futures = {pool.submit(r.execute, evals, batches.get((r.model, r.seed, tuple(r.extra[2:])), ())): r
                           for r, evals in runs}
                for f in concurrent.futures.as_completed(futures):
                    if f.exception():
                        failures.append(futures[f])
                        log("FAILED", futures[f].model, futures[f].id, f.exception())
            if failures:
                log("%d runs failed" % len(failures))
    if not args.no_report and not args.dry_run:
        report.write(args.results, os.path.join(ROOT, "bench", "results"))
        log("wrote bench/results/accuracy.md and accuracy.svg")


if __name__ == "__main__":
    main()
