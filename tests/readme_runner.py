"""Runs README.md's blocks as a new user would (see tests/test_readme.py), shared by the
README test and the session's main-job fixture (conftest.py), so the main job trains once.

``ReadmeSession`` walks the blocks in document order: the fixture runs them up to the
main job's training command, keeps a copy of the finished run, and the README test runs
the rest in the same copy of the repository.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(REPO, "README.md")
INSTALL_LINES = re.compile(r"^\s*(pip install |bash scripts/)")
BLOCK_TIMEOUT_S = 3 * 3600  # the main job trains in ~3 min idle; a shared, busy CPU took 40 min

# Runs Python blocks fed on stdin (one JSON string a line) in one namespace, as a script
# would; after each block it prints DONE and whether the block raised.
DRIVER = textwrap.dedent(
    """
    import json, sys, traceback
    namespace = {"__name__": "__main__"}
    for line in sys.stdin:
        failed = False
        try:
            exec(compile(json.loads(line), "<README block>", "exec"), namespace)
        except BaseException:
            traceback.print_exc()
            failed = True
        sys.stderr.flush()
        print("\\n%s %s" % (DONE, json.dumps(failed)), flush=True)
    """
)
DONE = "@@README-BLOCK-DONE"


def readme_blocks(text):
    """``[(section, language, source)]`` of the fenced python and bash blocks, in order."""
    blocks, section = [], ""
    for match in re.finditer(r"^## ([^\n]+)$|^```(\w*)\n(.*?)^```$", text, flags=re.M | re.S):
        if match.group(1):
            section = match.group(1).strip()
        elif match.group(2) in ("python", "bash"):
            blocks.append((section, match.group(2), match.group(3)))
    return blocks


def without_install_lines(source):
    """The block minus its install lines (``INSTALL_LINES``), and the lines dropped."""
    kept, dropped = [], []
    for line in source.splitlines():
        (dropped if INSTALL_LINES.match(line) else kept).append(line)
    return "\n".join(kept) + "\n", dropped


def fresh_copy(destination):
    """The repository as a clone has it: no virtual environment, runs, caches or git data."""
    ignore = shutil.ignore_patterns(".git", ".venv", "saved_models", "__pycache__", ".pytest_cache", "*.egg-info")
    shutil.copytree(REPO, destination, ignore=ignore)
    return destination


def environment(root):
    env = dict(os.environ)
    # The interpreter running the tests is the installed one; its bin holds keras-vit.
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    # The copy's package, as an editable install of the clone would import it.
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return env


class SectionInterpreter:
    """One Python process for one README section's Python blocks."""

    def __init__(self, section, root, env):
        self.section = section
        self.process = subprocess.Popen(
            [sys.executable, "-u", "-c", f"DONE = {DONE!r}\n" + DRIVER],
            cwd=root,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    def run(self, source):
        """Runs one block; returns (raised, its output)."""
        self.process.stdin.write(json.dumps(source) + "\n")
        self.process.stdin.flush()
        lines = []
        for line in self.process.stdout:
            if line.startswith(DONE):
                return json.loads(line[len(DONE) :]), "".join(lines)
            lines.append(line)
        return True, "".join(lines) + f"\n(interpreter exited with {self.process.wait()})"

    def close(self):
        self.process.stdin.close()
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:  # the blocks ran; a slow interpreter shutdown is not the README's
            self.process.kill()



class ReadmeSession:
    """README.md's blocks run in order in one fresh copy of the repository.

    Python blocks share one interpreter per section; bash blocks run in ``bash -e``. A
    failing block raises ``AssertionError`` naming the block, with its output.
    """

    def __init__(self, destination):
        with open(README) as file:
            self.blocks = readme_blocks(file.read())
        self.root = fresh_copy(str(destination))
        self.env = environment(self.root)
        self.next = 0  # index of the next block to run
        self.interpreter = None

    def run_through(self, predicate):
        """Runs blocks up to and including the first one for which ``predicate(language,
        source)`` holds (or to the end when none does)."""
        while self.next < len(self.blocks):
            section, language, source = self.blocks[self.next]
            self.next += 1
            self._run(self.next, section, language, source)
            if predicate(language, source):
                return

    def run_rest(self):
        self.run_through(lambda language, source: False)
        self.close()

    def _run(self, number, section, language, source):
        where = f"README block {number} ({language}, section {section!r}):\n{source}"
        if self.interpreter is not None and self.interpreter.section != section:
            self.interpreter.close()  # a section's names end with it
            self.interpreter = None
        if language == "bash":
            script, _ = without_install_lines(source)
            result = subprocess.run(
                ["bash", "-e", "-o", "pipefail", "-c", script], cwd=self.root, env=self.env,
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=BLOCK_TIMEOUT_S,
            )
            assert result.returncode == 0, f"{where}\nexit {result.returncode}; output:\n{result.stdout[-6000:]}"
        else:
            if self.interpreter is None:
                self.interpreter = SectionInterpreter(section, self.root, self.env)
            raised, output = self.interpreter.run(source)
            assert not raised, f"{where}\nraised; output:\n{output[-6000:]}"

    def close(self):
        if self.interpreter is not None:
            self.interpreter.process.kill()
            self.interpreter = None


def _runs_command(language, source, command):
    return language == "bash" and any(line.split("#")[0].strip() == command for line in source.splitlines())


def trains_the_main_job(language, source):
    """The README block that trains the main job (``keras-vit train`` with no options)."""
    return _runs_command(language, source, "keras-vit train")


MAIN_JOB_RUN = os.path.join("saved_models", "mnist_vit-ti4")


def exports_the_main_job(language, source):
    """The README block that exports the main job with the defaults (every format)."""
    return _runs_command(language, source, f"keras-vit export {MAIN_JOB_RUN}")
