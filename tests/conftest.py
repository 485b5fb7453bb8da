"""Shared fixtures. Servers used by several test modules are started once."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
