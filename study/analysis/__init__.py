"""Analysis of a study from its Optuna storage alone: the verdict, with intervals.

``data`` reads a study through the data contract (what every complete trial and the study
store; README "The data contract"); ``fits`` fits threshold and smooth curves and bootstraps
their intervals; ``artifact`` checks whether a sharp-looking thresholded rate is a metric
artifact of a smoothly shifting margin distribution; ``report`` writes the report.
"""
