"""An app module that cannot be imported: ``workers.faulty_import:X``."""

raise ImportError("faulty_import: this module fails to import on purpose")
