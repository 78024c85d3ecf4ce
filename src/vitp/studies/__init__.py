"""Studies of the questions the ViT-P paper leaves open (issue 24), one ``vitp study`` command each:

* ``annotation-budget`` (:mod:`vitp.studies.annotation_budget`): accuracy against annotation time
  for fine masks, coarse masks, boxes, clicks and mixtures (costs: :mod:`vitp.studies.costs`);
* ``point-assignment`` (:mod:`vitp.studies.point_assignment`): inference point rules
  (:mod:`vitp.point_rules`) on the same proposals of a trained checkpoint;
* ``domain-shift`` (:mod:`vitp.studies.domain_shift`): train on one domain, evaluate on each.

Every study takes a config like every other ``vitp`` command, writes its results (markdown + CSV)
and the exact commands it ran under one output directory, shows a progress bar and resumes
(:mod:`vitp.studies.runner`). How to run them: ``docs/studies.md``.
"""
