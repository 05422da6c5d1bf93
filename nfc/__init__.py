"""The application: the `nfc` command, the end-to-end demo, the embedded MongoDB server and process helpers.

The only package that may import all the others (`neuralfusion`, `training`, `export`, `serving`); none of them
imports it.
"""

__all__: list[str] = []
