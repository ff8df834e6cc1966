"""The old name of ``testapps``: ``workers.hello:raw`` and the like keep working.

The apps served in tests, benchmarks and chaos runs live in ``testapps/``; each module
here only re-exports its namesake there, so command lines written for the old name run.
"""
