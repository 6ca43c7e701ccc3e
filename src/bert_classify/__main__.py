"""`python -m bert_classify ...` is the same as the `bert-classify` console script.

torchrun runs this module (`torchrun -m bert_classify train ...`) in every worker process.
"""

from bert_classify.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
