"""`python -m ember …` (and `torchrun … -m ember refine3d …`): the command-line interface."""

from ember.cli.main import main

main()
