"""``python -m lmcore.tasks [FOLDER]``: write the shipped tasks' JSONL files (by default into the package)."""

import sys

from lmcore.tasks import HERE, write_tasks

for path in write_tasks(sys.argv[1] if len(sys.argv) > 1 else HERE):
    print(path)
