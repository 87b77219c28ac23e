"""Teacher scores: the contract every producer (scoring job, given score file, cross-fitting)
writes and every consumer (training shards, run identities) reads. Only constants here, so the
light modules that need them import no pandas or Ray Data."""

# Columns of a teacher-scores Parquet file: raw scores (logits), one row per (query, document).
SCORE_COLUMNS = ["query_id", "doc_id", "score"]
# The provenance file beside a scores folder; its ``fingerprint`` keys reuse (train/identity.py).
MANIFEST = "manifest.json"
