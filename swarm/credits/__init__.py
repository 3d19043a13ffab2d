"""Credits: the double-entry ledger of signed receipts, and their settlement as an SPL token."""
