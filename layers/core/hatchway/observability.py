"""One structured logger for every Hatchway process (Powertools Logger, JSON on stderr).

stderr keeps stdout free for what commands print for people and scripts
(the emulator's dotenv lines, ``ready``). Level: ``POWERTOOLS_LOG_LEVEL`` (default INFO).
"""

from __future__ import annotations

import logging
import sys

from aws_lambda_powertools import Logger

logger = Logger(service="hatchway", logger_handler=logging.StreamHandler(sys.stderr))
