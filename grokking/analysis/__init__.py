"""From run directories to tables and figures. Shared by every family: collect (finding run
folders, reading them through `RunDir`, skipping a damaged one in one line), tables (the md/tex/csv
writer), figures, alarms (scoring against the truth from validation) and output (the output
folder written whole or not at all). algorithmic/ and lm/ hold what a result means for their
family; each exposes READER, NOUN and prepare, which grokking.analyze dispatches runs to."""
