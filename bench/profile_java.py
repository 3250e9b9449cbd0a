"""Profile the Java path: ``python -m bench.profile_java [--rows N]``.

Starts the local stack (job server + expansion service), attaches py-spy to both Python
processes, runs the Java example pipeline once on W2, and writes where each process spent
its samples to bench/profiles/W5-java-pyspy.txt. Needs py-spy (pip install py-spy).
"""

from __future__ import annotations

import argparse
import collections
import signal
import subprocess
import time
from pathlib import Path

from bench import data, javapath

HERE = Path(__file__).resolve().parent


def _summary(path: Path, name: str, top: int = 15) -> str:
    own: collections.Counter = collections.Counter()
    incl: collections.Counter = collections.Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, n = line.rsplit(" ", 1)
        frames = stack.split(";")
        total += int(n)
        own[frames[-1][:110]] += int(n)
        for f in set(frames):
            incl[f[:110]] += int(n)
    out = [f"== {name}: {total} samples"]
    out += [f"  own  {100 * n / total:5.1f}% {f}" for f, n in own.most_common(top)]
    out += [f"  incl {100 * n / total:5.1f}% {f}" for f, n in incl.most_common(top + 10)]
    return "\n".join(out)


def main() -> None:
    from expansion_service._local import LocalStack

    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--workdir", default=str(HERE / ".work"))
    args = ap.parse_args()
    workdir = Path(args.workdir)
    paths = {k: str(v) for k, v in data.build_models(workdir).items()}
    src = data.write_jsonl(workdir / f"w5-{args.rows}.jsonl", args.rows)
    classpath = javapath.CLASSPATH.read_text().strip()
    texts = []
    with LocalStack(workdir / "stack", allow=["bench.models.*"],
                    env={"PYTHONPATH": str(javapath.REPO)},
                    trusted_model_roots=sorted({str(Path(p).parent) for p in paths.values()})
                    ) as stack:
        names = ("job_server", "expansion_service")
        spies = [subprocess.Popen(["py-spy", "record", "--pid", str(p.pid), "-r", "100", "-f",
                                   "raw", "-o", str(workdir / f"spy-{n}.txt")],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                 for p, n in zip(stack._procs, names)]
        time.sleep(1.0)
        t0 = time.perf_counter()
        done = subprocess.run(
            ["java", "-cp", classpath, "io.crossinfer.examples.ClassifyRows", f"--input={src}",
             f"--output={workdir / 'out' / 'profile'}", "--framework=pytorch",
             f"--modelUri={paths['mlp']}", "--modelClass=bench.models:MLP", *stack.java_args()],
            capture_output=True, text=True)
        wall = time.perf_counter() - t0
        for spy in spies:
            spy.send_signal(signal.SIGINT)
        for spy in spies:
            spy.wait(60)
        texts.append(f"# W5 Java path, {args.rows} rows: java exit {done.returncode}, "
                     f"{wall:.1f} s wall ({done.stdout.strip()[-60:]})")
        for n in names:
            texts.append(_summary(workdir / f"spy-{n}.txt", n))
    text = "\n\n".join(texts) + "\n"
    (HERE / "profiles").mkdir(exist_ok=True)
    (HERE / "profiles" / "W5-java-pyspy.txt").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
