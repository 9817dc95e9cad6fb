"""``@smt_logged``: each call is one Sumatra record with its arguments, output, status and duration.

Run it inside a Sumatra project (the file must be committed): ``python decorated.py 3``.
"""
import sys

from smtlock import current_label, smt_logged


@smt_logged(tags=["example"], reason="decorator example")
def simulate(x: int, steps: int = 100) -> int:
    print(f"record {current_label()}: x={x}, steps={steps}")
    return sum(i * x for i in range(steps))


if __name__ == "__main__":
    simulate(int(sys.argv[1]) if len(sys.argv) > 1 else 1)
