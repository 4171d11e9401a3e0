"""flatprep.pipelines: orchestration (Nipype workflows, Dask runner, command lines).

Installed as ``flatprep.pipelines``; the library ``flatprep`` never imports it.
"""
