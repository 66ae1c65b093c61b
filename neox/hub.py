"""Finding checkpoint files: a local folder, or a Hugging Face Hub repo id.

Repo ids go through huggingface_hub, so neox shares the Hugging Face cache (``HF_HOME``,
``HF_HUB_CACHE``) with transformers and honours ``HF_HUB_OFFLINE``: a model transformers has
downloaded loads here without a network, and the other way round.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

logger = logging.getLogger(__name__)

__all__ = ["HubOptions", "resolve_file", "is_local"]


class HubOptions:
    """The keyword arguments every ``from_pretrained`` accepts for locating files."""

    __slots__ = ("revision", "cache_dir", "local_files_only", "token", "subfolder", "force_download")

    def __init__(
        self,
        revision: str | None = None,
        cache_dir: str | os.PathLike | None = None,
        local_files_only: bool = False,
        token: str | bool | None = None,
        subfolder: str = "",
        force_download: bool = False,
    ) -> None:
        self.revision = revision
        self.cache_dir = cache_dir
        self.local_files_only = bool(local_files_only)
        self.token = token
        self.subfolder = subfolder or ""
        self.force_download = bool(force_download)

    @classmethod
    def pop_from(cls, kwargs: dict) -> "HubOptions":
        """Take the hub options out of a ``from_pretrained`` kwargs dict (the rest stays)."""
        names = [n for n in cls.__slots__ if n in kwargs]
        opts = cls(**{n: kwargs.pop(n) for n in names})
        # transformers' old spelling of `token`
        if "use_auth_token" in kwargs:
            opts.token = kwargs.pop("use_auth_token")
        return opts


def is_local(name_or_path: str | os.PathLike) -> bool:
    return Path(name_or_path).expanduser().is_dir()


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").strip().lower() in {"1", "on", "yes", "true"}


def resolve_file(
    name_or_path: str | os.PathLike,
    filename: str,
    options: HubOptions | None = None,
    *,
    required: bool = False,
) -> Path | None:
    """Path of ``filename`` in a folder or Hub repo; None when absent (OSError if ``required``).

    Raises OSError with a message naming the repo when the repo itself cannot be found, when it
    is gated, or (with ``required``) when the file is neither cached nor reachable.
    """
    options = options or HubOptions()
    if is_local(name_or_path):
        path = Path(name_or_path).expanduser() / options.subfolder / filename
        if path.exists():
            return _regular_file(path)
        if required:
            raise OSError(f"{filename!r} not found in the folder {str(path.parent)!r}")
        return None

    repo_id = str(name_or_path)
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        HFValidationError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    offline = options.local_files_only or _offline()
    try:
        path = hf_hub_download(
            repo_id,
            filename,
            subfolder=options.subfolder or None,
            revision=options.revision,
            cache_dir=options.cache_dir,
            token=options.token,
            local_files_only=offline,
            force_download=options.force_download,
        )
    except HFValidationError:
        raise OSError(
            f"{repo_id!r} is neither an existing local folder nor a valid Hugging Face Hub repo id"
        ) from None
    except LocalEntryNotFoundError:
        # Not in the cache, and either offline or the Hub is unreachable.
        if required:
            why = "offline (HF_HUB_OFFLINE or local_files_only)" if offline else "the Hub could not be reached"
            raise OSError(
                f"{filename!r} of {repo_id!r} is not in the Hugging Face cache and {why}; "
                "download it once while online, or pass a local folder"
            ) from None
        return None
    except EntryNotFoundError:
        if required:
            raise OSError(f"{repo_id!r} has no file {filename!r}") from None
        return None
    except GatedRepoError:
        raise OSError(f"{repo_id!r} is a gated repo: accept its terms on the Hub and pass token=") from None
    except RepositoryNotFoundError:
        raise OSError(
            f"{repo_id!r} is not a local folder and no such repo exists on the Hugging Face Hub "
            "(or it is private: pass token=)"
        ) from None
    except RevisionNotFoundError:
        raise OSError(f"revision {options.revision!r} not found in {repo_id!r}") from None
    return _regular_file(Path(path))


def _regular_file(path: Path) -> Path:
    # A FIFO (or device) in place of config.json or a weight file would block the first read
    # forever; a folder would fail later with a confusing error. Symlinks (the Hub cache) are followed.
    if not path.is_file():
        raise OSError(f"{path} is not a regular file")
    return path
