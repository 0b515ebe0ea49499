"""`python -m grokking.lm [key=value ...]`: train one language-model run, or a sweep
(`+sweeps=lm_overfitting`, `-m`). Its configs are in conf/lm/ (config.yaml, its groups, its sweep
files); the schema and the checks are in grokking/lm/config.py."""

from grokking.lm import COMMAND

if __name__ == "__main__":
    COMMAND.main()
