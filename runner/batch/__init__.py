"""Batch mode: the planned requests of batched providers in, their rows out, through each
provider's OpenAI-compatible batch API (half price, answers within 24 hours).

    files.py    pure: requests -> JSONL input files split by the provider's limits; output and
                error files -> one `Attempt` per request id
    store.py    batches.jsonl: each batch recorded durably before and as it is submitted
    api.py      the files and batches routes (bounded, redacted, one-line errors)
    driver.py   the run's side: reserve, record, submit, poll, rows, settle, re-attach
"""

from .api import cancel_batches
from .driver import batched_providers, drive
from .store import batch_summary, open_batch_providers

__all__ = ["batch_summary", "batched_providers", "cancel_batches", "drive",
           "open_batch_providers"]
