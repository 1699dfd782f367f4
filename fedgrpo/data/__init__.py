"""What organisations bring: question and label files, and the checkers that compare answers with labels.

* :mod:`fedgrpo.data.files` -- reading JSON Lines, CSV, Parquet or a `datasets` folder into rows;
  how questions are normalised and deduplicated.
* :mod:`fedgrpo.data.checkers` -- built-in and user-written checkers of a candidate against a label.
* :mod:`fedgrpo.data.make` -- a built-in reasoning-gym domain written out as such files.
"""
