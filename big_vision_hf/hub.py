"""Publishing a folder on the Hugging Face Hub (``big-vision-hf convert/transfer ... --push-to-hub REPO``).

Only the model folder goes up: what a user loads (weights, configs, processor and tokenizer files, remote code, the
model card, metrics and plots), never training state. :func:`upload_plan` lists it: the ``checkpoints/`` of a
transfer (optimizer state, pickled RNG states) and other state folders are left out, and so is any file in a
pickle format (``.bin``/``.pt``/``.pkl``..., or pickle / torch-zip content under any name), so the repository holds
safetensors and JSON only. :func:`push_folder` creates the repository if needed, writes its id into the model card's
usage snippet (``"path/to/this/folder"``) and uploads exactly that list with ``huggingface_hub.HfApi.upload_folder``
(the token comes from ``huggingface-cli login`` / ``HF_TOKEN``, as everywhere in the ecosystem).
"""

from __future__ import annotations

import os
import zipfile

__all__ = ["CARD_PLACEHOLDER", "EXCLUDED_FOLDERS", "is_pickle", "push_folder", "upload_plan"]

#: Folders never uploaded: Trainer checkpoints (optimizer / scheduler / RNG state), logs, caches.
EXCLUDED_FOLDERS = ("checkpoints", "runs", "wandb", "mlruns", "__pycache__", ".cache", ".git")
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".joblib")
#: What model cards write where the folder's location goes (``folder = "path/to/this/folder"``).
CARD_PLACEHOLDER = "path/to/this/folder"


def is_pickle(path: str) -> bool:
    """Whether the file is (or holds) a pickle: by suffix, by the pickle protocol header, or a torch zip archive
    (``torch.save``) with a pickled member."""
    if path.lower().endswith(_PICKLE_SUFFIXES):
        return True
    with open(path, "rb") as f:
        head = f.read(4)
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return True
    if head == b"PK\x03\x04":
        try:
            with zipfile.ZipFile(path) as z:
                return any(name.endswith(".pkl") for name in z.namelist())
        except zipfile.BadZipFile:
            return False
    return False


def upload_plan(folder: str) -> list[str]:
    """The files of ``folder`` (relative, ``/``-separated, sorted) that a push uploads: everything but the
    `EXCLUDED_FOLDERS`, hidden files and pickles."""
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"{folder}: no such folder")
    files = []
    for root, dirs, names in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if d not in EXCLUDED_FOLDERS and not d.startswith("."))
        for name in names:
            path = os.path.join(root, name)
            if name.startswith(".") or os.path.islink(path) or is_pickle(path):
                continue
            files.append(os.path.relpath(path, folder).replace(os.sep, "/"))
    if not any(f.endswith(".safetensors") for f in files):
        raise ValueError(f"{folder}: no .safetensors weights to upload")
    return sorted(files)


def _set_card_location(folder: str, repo_id: str) -> None:
    card = os.path.join(folder, "README.md")
    if os.path.exists(card):
        with open(card, encoding="utf-8") as f:
            text = f.read()
        if CARD_PLACEHOLDER in text:
            with open(card, "w", encoding="utf-8") as f:
                f.write(text.replace(CARD_PLACEHOLDER, repo_id))


def push_folder(folder: str, repo_id: str, *, private: bool | None = None, token: str | None = None,
                commit_message: str | None = None) -> str:
    """Uploads the `upload_plan` of ``folder`` to the model repository ``repo_id`` (created if missing); returns
    its URL. The model card's usage snippet is pointed at ``repo_id`` first."""
    from huggingface_hub import HfApi

    files = upload_plan(folder)
    _set_card_location(folder, repo_id)
    api = HfApi(token=token)
    url = api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
    api.upload_folder(folder_path=folder, repo_id=repo_id, repo_type="model", allow_patterns=files,
                      commit_message=commit_message or "Upload with big_vision_hf")
    print(f"pushed {len(files)} files of {folder} to {getattr(url, 'url', url)}")
    return str(getattr(url, "url", url))
