"""The learnability ladder: can nano learn each of ten small tasks, and which component is in the way?

    python benchmarks/ladder.py --rungs 1,2,3,4,8 --seeds 0,1 --steps 300 --threads 1 --out runs/ladder
    python benchmarks/ladder.py --quick --rungs 1 --out /tmp/ladder-smoke        # smoke run, seconds
    python benchmarks/ladder.py --report runs/ladder-before runs/ladder-after    # before/after table

Rungs (each a generated task with a fixed-seed held-out set, fresh training samples every step):
1 colour of the only object, 2 its shape, 3 colour of the named shape among 2-4 objects (one per quadrant,
so one per sub-image), 4 count 1-6, 5 box of the only object (Acc@0.5), 6 box of the named object among 2-4,
7 transcribe one word of a 500-word lexicon, 8 two-digit addition (text only); 9 is rung 3 with the objects
placed anywhere, as synth-bench places them, and 10 the other lookup ("What shape is the red object?") on
that layout (run 9 and 10 by name: the default is rungs 1-8). Controls beside each rung swap one component
(benchmarks/ladder/controls.py). Prints a table (mean ± sd over seeds, steps to 90%, binding for rungs 3, 6, 9
and 10) and writes OUT/runs/*.json, OUT/summary.json, OUT/table.md and OUT/ladder.png.
"""

import sys
from pathlib import Path

# The package is benchmarks/ladder/, imported as `ladder` (a package named `benchmarks` may be installed
# in site-packages and would shadow this folder). Running this file puts benchmarks/ first on sys.path.
sys.path.insert(0, str(Path(__file__).resolve().parent))

from ladder.run import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
