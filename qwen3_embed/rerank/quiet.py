"""Keep transformers' load report about the reranker's LM head off the user's terminal.

The backbone is loaded without its LM head on purpose (the score needs two of its rows, read
separately: `rerank.head`), so transformers warns that `lm_head.weight` was UNEXPECTED. That is
the only report dropped; a report naming any other key is kept, as it may mean a broken
checkpoint.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

REPORT_LOGGER = "transformers.modeling_utils"


class _HeadOnlyReport(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "LOAD REPORT" not in message:
            return True
        rows = [line for line in message.splitlines() if "|" in line and "UNEXPECTED" in line]
        others = [
            line
            for line in message.splitlines()
            if "|" in line and not line.startswith(("Key", "-")) and line not in rows
        ]
        head_only = rows and all(line.split("|")[0].strip() == "lm_head.weight" for line in rows)
        return not (head_only and not others)


@contextlib.contextmanager
def quiet_head_report() -> Iterator[None]:
    logger = logging.getLogger(REPORT_LOGGER)
    report_filter = _HeadOnlyReport()
    logger.addFilter(report_filter)
    try:
        yield
    finally:
        logger.removeFilter(report_filter)
