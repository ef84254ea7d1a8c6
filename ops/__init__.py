"""The operator command line: find a document, list pending and failed deliveries, check (and
repair) a manifest, and move poisoned verification messages back. Run from an operator's machine
(``python -m ops --help``); never deployed (``.funcignore``). Blob work goes through
:class:`receiver.store.BlobStore` and the receiver's own rules, never a copy of them.
"""
