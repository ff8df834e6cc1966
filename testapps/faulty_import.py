"""An app module that cannot be imported: ``testapps.faulty_import:X``."""

raise ImportError("faulty_import: this module fails to import on purpose")
