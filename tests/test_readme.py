"""README.md works as written: every ```python and ```bash block runs, in order, and exits 0.

The blocks run as a new user runs them after the install line: from the root of a fresh
copy of the repository, with the real ``keras-vit`` command and the real API, nothing
rewritten. Python blocks run in one interpreter per README section (``## ...``), so a
later block may use the names of an earlier one in the same section; bash blocks run in
``bash -e``, in document order with the Python blocks.

One rule drops lines, and only these (``INSTALL_LINES``): installing (``pip install``) and
the scripts that create ``.venv`` and call everything else (``bash scripts/...``). CI runs
``bash scripts/test.sh`` itself, and ``scripts/quickstart.sh`` repeats the Training, Deploy
and evaluate commands that run here.

Training is not shortened: the Deploy block exports full-integer int8, which the export
verifies at >= 99% top-1 agreement with Keras, and only the fully trained main-job model
passes that (after 5 epochs it agreed on 94.5%). The blocks up to the main job's training
run once per session in the ``readme_session`` fixture (conftest.py), which also hands a
copy of that run to every test of the trained model; test_export.py's fixture runs on
through the Deploy block's export (every format, the defaults) and tests those files; this
test runs the rest.
"""

import textwrap

import pytest

from readme_runner import README, readme_blocks, without_install_lines

def test_only_install_lines_are_left_out():
    """The skip rule drops exactly the install and CI-script lines, nothing a user would try next."""
    with open(README) as file:
        blocks = readme_blocks(file.read())
    dropped = [line.split("#")[0].strip() for _, _, source in blocks for line in without_install_lines(source)[1]]
    assert dropped == [
        "bash scripts/quickstart.sh",
        "bash scripts/test.sh",
        'pip install -c constraints.txt -e ".[export]"',
    ]
    assert sum(language == "python" for _, language, _ in blocks) >= 6
    assert sum(language == "bash" for _, language, _ in blocks) >= 5


def test_readme_block_of_the_transformer_block_is_its_source():
    """The Architecture section shows TransformerBlock.call as the code runs it."""
    import inspect

    from keras_vit.core.layers import TransformerBlock

    with open(README) as file:
        blocks = readme_blocks(file.read())
    shown = next(source for _, language, source in blocks if source.startswith("def call("))
    source = textwrap.dedent(inspect.getsource(TransformerBlock.call))
    assert shown.replace("  # TransformerBlock.call", "") == source


@pytest.mark.slow  # the main job (through readme_session), exports to every format, figures
def test_every_readme_block_runs_as_written(readme_session):
    readme_session.run_rest()
    assert readme_session.next == len(readme_session.blocks)
