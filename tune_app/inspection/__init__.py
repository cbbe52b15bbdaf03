"""Reading what a run wrote: the HTML report and checkpoint evaluation (never imports the training code)."""
