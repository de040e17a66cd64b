"""Print an "Open in Colab" link for every notebook, from this checkout's GitHub remote.

    python scripts/colab_links.py                 # origin, current branch
    python scripts/colab_links.py --remote https://github.com/<owner>/<repo> --branch main

Colab opens any notebook of a public GitHub repository at
https://colab.research.google.com/github/<owner>/<repo>/blob/<branch>/<path>. A notebook opened that
way has no `utils` next to it: set BUNDLE_GIT_URL in its first cell to the same repository.
"""

from __future__ import annotations

import argparse
import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
COLAB = "https://colab.research.google.com/github"


def github_repo(remote: str) -> str:
    """'owner/repo' from an https or ssh GitHub remote URL; ValueError for anything else."""
    match = re.fullmatch(r"(?:https://github\.com/|git@github\.com:|ssh://git@github\.com/)([^/]+)/([^/]+?)(?:\.git)?/?",
                         remote.strip())
    if match is None:
        raise ValueError(f"{remote!r} is not a GitHub repository URL; Colab opens notebooks from GitHub only. "
                         "Pass --remote https://github.com/<owner>/<repo>, or open the notebooks from Google Drive.")
    return f"{match.group(1)}/{match.group(2)}"


def colab_links(remote: str, branch: str, notebooks: list[Path]) -> list[str]:
    """One Colab URL per notebook path (relative to the repository root)."""
    repo = github_repo(remote)
    return [f"{COLAB}/{repo}/blob/{branch}/{path.as_posix()}" for path in notebooks]


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--remote", help="GitHub URL (default: git remote origin)")
    parser.add_argument("--branch", help="default: the current branch")
    args = parser.parse_args()
    try:
        remote = args.remote or _git("remote", "get-url", "origin")
        branch = args.branch or _git("rev-parse", "--abbrev-ref", "HEAD")
        notebooks = sorted(p.relative_to(ROOT) for pattern in ("*.ipynb", "student/*.ipynb")  # solutions, student edition
                           for p in (ROOT / "notebooks").glob(pattern))
        links = colab_links(remote, branch, notebooks)
    except subprocess.CalledProcessError:
        raise SystemExit("This checkout has no git remote 'origin': pass --remote https://github.com/<owner>/<repo>.")
    except ValueError as err:
        raise SystemExit(str(err))
    for path, url in zip(notebooks, links):
        print(f"{'student edition ' if path.parent.name == 'student' else ''}{path.stem}: {url}")


if __name__ == "__main__":
    main()
