"""The NIM connector (server side).

Arrives with issue 4; this placeholder keeps `import flytekit` working meanwhile.
"""
