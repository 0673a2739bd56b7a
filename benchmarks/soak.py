"""Soak: many generations on one Session, RSS sampled; fails on growth once warm.

    python benchmarks/soak.py [--generations 1000] [--model FILE] [--limit-mb 1.0]

Each round: generate (sampled, stop strings, logprobs), stream a few pieces and abandon
the stream, save and load the state, fork, chat, reset. RSS (from /proc/self/statm) is
sampled every --every rounds; after --warmup rounds it may not grow by more than
--limit-mb. Prints the curve and exits 1 on growth.
"""
import argparse
import os
import sys
import tempfile


def rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--generations", type=int, default=1000)
    p.add_argument("--model", default=None, help="default: a small random q4_K_M model")
    p.add_argument("--every", type=int, default=50)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--limit-mb", type=float, default=1.0)
    a = p.parse_args()
    import guanaco_rt
    from guanaco_rt.writer import write_random_model
    with tempfile.TemporaryDirectory() as tmp:
        path = a.model
        if path is None:
            path = os.path.join(tmp, "soak.bin")
            write_random_model(path, "q4_K_M", n_vocab=2000, n_embd=256, n_mult=256, n_head=4, n_layer=2, seed=5)
        m = guanaco_rt.Model(path, n_threads=2)
        s = guanaco_rt.Session(m, n_ctx=256, context_policy="shift", seed=1)
        curve, base = [], None
        for i in range(a.generations + 1):
            s.generate([1, 5 + i % 50, 9], max_new_tokens=24, temperature=0.8, stop=["xyz"], n_probs=2)
            st = s.stream([1, 7], max_new_tokens=40)
            next(st, None)
            st.close()
            s.load_state(s.save_state())
            s.fork().close()
            s.chat(f"turn {i}", max_new_tokens=4)
            if i % 20 == 0:
                s.reset()
            if i % a.every == 0:
                r = rss_mb()
                curve.append((i, r))
                print(f"{i:6d} generations  RSS {r:8.2f} MB", flush=True)
                if i >= a.warmup and base is None:
                    base = r
        growth = curve[-1][1] - base if base is not None else 0.0
        print(f"growth after warm-up ({a.warmup}): {growth:+.2f} MB (limit {a.limit_mb} MB)")
        sys.exit(1 if growth > a.limit_mb else 0)


if __name__ == "__main__":
    main()
