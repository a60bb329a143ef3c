"""A bare supervisord event listener for the benchmarks: appends
"<eventname> <pid> <CLOCK_MONOTONIC seconds>" for every PROCESS_STATE event it
receives to the file named by its first argument, so a benchmark can see when
supervisord delivered each event."""

import sys
import time

from supervisor import childutils


def main() -> None:
    with open(sys.argv[1], "a", buffering=1) as out:
        while True:
            headers, payload = childutils.listener.wait(sys.stdin, sys.stdout)
            received = time.monotonic()
            fields = childutils.get_headers(payload.split("\n", 1)[0])
            out.write(f"{headers['eventname']} {fields.get('pid', 0)} {received:.6f}\n")
            childutils.listener.ok(sys.stdout)


if __name__ == "__main__":
    main()
