"""`python -m taskyard`, and the `taskyard` command: the CLI in `taskyard.cli`.

`mock-backend` is dispatched before that import: it needs only aiohttp, and test suites and
benchmarks start it hundreds of times.
"""

import sys


def run() -> None:
    if sys.argv[1:2] == ["mock-backend"]:
        from taskyard.mockbackend.cli import mock_backend

        mock_backend(sys.argv[2:], prog_name="taskyard mock-backend")
    else:
        from taskyard.cli import main

        main()


if __name__ == "__main__":
    run()
