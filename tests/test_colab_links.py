"""The README's "Open in Colab" links are built from the GitHub remote the way Colab expects."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
import colab_links  # noqa: E402


@pytest.mark.parametrize("remote", ["https://github.com/nycu-dl/ddpm-course", "https://github.com/nycu-dl/ddpm-course.git",
                                    "git@github.com:nycu-dl/ddpm-course.git", "ssh://git@github.com/nycu-dl/ddpm-course"])
def test_every_github_remote_form_gives_the_colab_url(remote):
    [url] = colab_links.colab_links(remote, "main", [Path("notebooks/01_mnist_ddpm.ipynb")])
    assert url == "https://colab.research.google.com/github/nycu-dl/ddpm-course/blob/main/notebooks/01_mnist_ddpm.ipynb"


def test_a_remote_that_is_not_github_says_what_to_do():
    with pytest.raises(ValueError, match="GitHub only.*Google Drive"):
        colab_links.github_repo("/work/main")
