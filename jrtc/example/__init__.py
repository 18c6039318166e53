"""The built-in examples: two small byte-level models trained on a synthetic multi-query recall task.

``recall.pt`` is a JRT-RNN (prefix linear attention with an encoder), ``recall-based.pt`` its Based twin
(causal linear attention, no encoder). ``settings.json`` holds the task, model and training settings,
``train.py`` the script that made both (``python -m jrtc.example.train jrt|based``), ``recall_task.py`` the
task; ``jrtc eval ENGINE --task recall`` measures them.
"""

from pathlib import Path

EXAMPLE_DIR = Path(__file__).resolve().parent
CHECKPOINT = EXAMPLE_DIR / "recall.pt"  # the JRT-RNN
BASED_CHECKPOINT = EXAMPLE_DIR / "recall-based.pt"
SETTINGS = EXAMPLE_DIR / "settings.json"
