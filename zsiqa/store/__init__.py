"""The results store: the files a run writes in its results folder (results files, per-layer
and part files, records, image stamps, summaries, locks), one module per job. Import its names
from zsiqa.results, the store's entry point; a module here imports only the modules below it:

    summaries, resume → rows, tables → records → naming, csvfiles, locks
"""
