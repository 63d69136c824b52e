#!/usr/bin/env python3
"""Throughput of `natsl tokenize` in MB/s of input text, for 1 and 2 (or --threads) threads.

The corpus is built in a temporary directory from the text files of ../shared/data (never copied into the
repository), repeated to about --mb MB, in three forms: plain text files (one document each), JSONL (one
document per ~2 KB paragraph run) and the same JSONL gzip-compressed. Each case is run --repeat times and the
fastest wall time kept (the machine is shared; the fastest run is the least disturbed). MB/s counts the
uncompressed input bytes. MB per CPU-second (user + sys of the natsl process, the smallest of the repeats) is
the per-core rate, which holds on a machine that other work shares, where the wall-clock rate of 2 threads
does not. Rows go to --json as JSON lines (name, shape, ours_ms, peer, peer_ms, ratio, gpu, commit, date, plus
mb_per_s, mb_per_s_per_thread, cpu_s and mb_per_cpu_s).

  experiments/bench/tokenize_bench.py --natsl build/natsl --mb 100 --json experiments/results/bench/X.jsonl
  (add --tokenizer-model M.model to time a SentencePiece model)
"""
import argparse, gzip, json, os, resource, shutil, subprocess, sys, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def build_corpus(src_dir, mb, tmp):
    names = sorted(n for n in os.listdir(src_dir) if n.endswith(".txt"))
    base = b"".join(open(os.path.join(src_dir, n), "rb").read() for n in names)
    want = mb * 1_000_000
    text = (base * (want // len(base) + 1))[:want].decode("utf-8", "ignore")
    os.makedirs(os.path.join(tmp, "text"))
    parts = 16  # many files, so that every thread has documents
    step = len(text) // parts + 1
    for i in range(parts):
        with open(os.path.join(tmp, "text", f"part{i:02d}.txt"), "w", encoding="utf-8") as f:
            f.write(text[i * step:(i + 1) * step])
    jsonl = os.path.join(tmp, "corpus.jsonl")
    with open(jsonl, "w", encoding="utf-8") as f:
        at = 0
        while at < len(text):
            end = text.find("\n", at + 2000)
            end = len(text) if end < 0 else end + 1
            f.write(json.dumps({"text": text[at:end], "source": "shared/data"}) + "\n")
            at = end
    with open(jsonl, "rb") as fin, gzip.open(jsonl + ".gz", "wb", compresslevel=6) as fout:
        shutil.copyfileobj(fin, fout)
    os.makedirs(os.path.join(tmp, "gz"))
    os.rename(jsonl + ".gz", os.path.join(tmp, "gz", "corpus.jsonl.gz"))
    text_bytes = sum(os.path.getsize(os.path.join(tmp, "text", n)) for n in os.listdir(os.path.join(tmp, "text")))
    return {"text": (os.path.join(tmp, "text"), text_bytes),
            "jsonl": (jsonl, os.path.getsize(jsonl)),
            "jsonl.gz": (os.path.join(tmp, "gz"), os.path.getsize(jsonl))}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--natsl", default=os.path.join(ROOT, "build", "natsl"))
    ap.add_argument("--data", default=os.path.join(ROOT, "..", "shared", "data"))
    ap.add_argument("--mb", type=int, default=100)
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--tokenizer-model", default="")
    ap.add_argument("--json", default="")
    ap.add_argument("--date", default=time.strftime("%Y-%m-%d"))
    ap.add_argument("--commit", default="", help="the commit --natsl was built from (default: this checkout's HEAD)")
    a = ap.parse_args()
    commit = a.commit or subprocess.run(["git", "-C", ROOT, "rev-parse", "--short=12", "HEAD"], capture_output=True,
                                        text=True).stdout.strip() or "unknown"
    tok = ["--tokenizer-model", a.tokenizer_model] if a.tokenizer_model else []
    kind = "sentencepiece" if a.tokenizer_model else "byte"
    rows = []
    with tempfile.TemporaryDirectory(prefix="natsl_tokbench_") as tmp:
        corpus = build_corpus(a.data, a.mb, tmp)
        print(f"corpus: {a.mb} MB from {a.data} in {tmp}; natsl {a.natsl}; commit {commit}")
        print(f"{'input':<10} {'threads':>7} {'best s':>8} {'MB/s':>8} {'MB/s/thread':>12} {'cpu s':>7} {'MB/cpu-s':>9}")
        for form, (path, nbytes) in corpus.items():
            for threads in [int(t) for t in a.threads.split(",")]:
                best = cpu = None
                for r in range(a.repeat):
                    out = os.path.join(tmp, f"out_{form}_{threads}_{r}")
                    os.makedirs(out)
                    t0 = time.perf_counter()
                    u0 = resource.getrusage(resource.RUSAGE_CHILDREN)
                    subprocess.run([a.natsl, "tokenize", path, out + "/x", "--threads", str(threads), "--quiet"] + tok,
                                   check=True, stdout=subprocess.DEVNULL)
                    dt = time.perf_counter() - t0
                    u1 = resource.getrusage(resource.RUSAGE_CHILDREN)
                    c = (u1.ru_utime - u0.ru_utime) + (u1.ru_stime - u0.ru_stime)
                    cpu = c if cpu is None else min(cpu, c)
                    shutil.rmtree(out)
                    best = dt if best is None else min(best, dt)
                mbs = nbytes / 1e6 / best
                print(f"{form:<10} {threads:>7} {best:>8.3f} {mbs:>8.1f} {mbs / threads:>12.1f} {cpu:>7.2f} "
                      f"{nbytes / 1e6 / cpu:>9.1f}")
                rows.append({"name": f"tokenize {kind} {form} threads={threads}",
                             "shape": f"{nbytes / 1e6:.0f} MB {form} (shared/data repeated)",
                             "ours_ms": best * 1e3, "peer": None, "peer_ms": None, "ratio": None,
                             "gpu": "none (CPU, 2 cores)", "commit": commit, "date": a.date,
                             "mb_per_s": mbs, "mb_per_s_per_thread": mbs / threads, "cpu_s": cpu,
                             "mb_per_cpu_s": nbytes / 1e6 / cpu})
    if a.json:
        with open(a.json, "a") as f:
            for r in rows:
                f.write(json.dumps(r, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
