"""Yahoo Answers documents (Yang et al., 2017), the text corpus of the Skip-VAE paper.

Files (in `<data dir>/yahoo/`): `train.txt` (100,000 documents), `valid.txt` (10,000), `test.txt` (10,000); one
tokenized, lower-cased document per line, rare words already replaced by `_UNK`. They are published in the
harvardnlp/DeepLatentNLP repository (`data/yahoo/{train,val,test}.txt`) and checked here against git's blob ids
(train) and SHA-256 (valid, test).

Vocabulary: `<pad>`=0, `<bos>`=1, `<eos>`=2, `_UNK`=3, then words by decreasing training-set frequency (ties in
alphabetical order), `max_vocab` entries in all; or read from `vocab_file`. It is saved in every checkpoint, and
`test` maps words with the checkpoint's vocabulary. Documents become `<bos> w_1 .. w_n <eos>`; unknown words map
to `_UNK`; blank lines are skipped. Both are counted and reported.

Batches (`batching`): documents sorted by length and cut into batches of `batch_size` (so padding is small), or the
authors' batches of documents of one length (partial batches kept); the batch order is shuffled every epoch, as the
paper's code does. Each batch is {x: (B, T) token ids padded with `<pad>` (the
decoder masks them), index: (B,) position of the document in its file}.
"""

from collections import Counter
from functools import partial
from pathlib import Path
from typing import Literal

import torch
from jsonargparse.typing import NonNegativeInt, PositiveInt
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch.utils.data import Dataset

from datamodules.base import SkipVAEDataModule
from datamodules.files import DataError, RemoteFile, fetch

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "_UNK"
SPECIALS = (PAD, BOS, EOS, UNK)
_REPO = "https://raw.githubusercontent.com/harvardnlp/DeepLatentNLP/master/data/yahoo/"
YAHOO_FILES = {
    "train.txt": RemoteFile("train.txt", (_REPO + "train.txt",), git_sha1="ae7d4fc4d07e520dffdbd835868a1d7c7a6eb471"),
    "valid.txt": RemoteFile(
        "valid.txt", (_REPO + "val.txt",), sha256="3247ac3ffcc4d4bfd6216f2aaa617f6706cdc4081874da39245fe156825898d1"
    ),
    "test.txt": RemoteFile(
        "test.txt", (_REPO + "test.txt",), sha256="ad843c4363adbdd07d8055d9bf121e5f23c285760df43a0031b89d8538293075"
    ),
}


def read_documents(path: Path) -> tuple[list[list[str]], int]:
    """Whitespace-tokenized non-blank lines of a UTF-8 file, and the number of blank lines skipped."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as error:
        raise DataError(f"{path} is not UTF-8 text ({error}); expected one tokenized document per line.") from error
    documents = [line.split() for line in lines]
    kept = [doc for doc in documents if doc]
    if not kept:
        raise DataError(f"{path} is empty or holds only blank lines; expected one tokenized document per line.")
    return kept, len(documents) - len(kept)


class Vocabulary:
    """Words <-> ids, with `<pad>`, `<bos>`, `<eos>` at 0, 1, 2 and `_UNK` for every unknown word."""

    def __init__(self, words: list[str]):
        if tuple(words[:3]) != SPECIALS[:3] or UNK not in words:
            raise DataError(f"a vocabulary must start with {PAD}, {BOS}, {EOS} (ids 0, 1, 2) and contain {UNK}")
        self.words = list(words)
        self.ids = {word: i for i, word in enumerate(self.words)}
        if len(self.ids) != len(self.words):
            duplicates = sorted(w for w, n in Counter(self.words).items() if n > 1)[:5]
            raise DataError(f"the vocabulary lists some words twice: {duplicates}")
        self.unk_id = self.ids[UNK]

    def __len__(self) -> int:
        return len(self.words)

    def __eq__(self, other) -> bool:
        return isinstance(other, Vocabulary) and self.words == other.words

    @classmethod
    def build(cls, documents: list[list[str]], max_size: int) -> "Vocabulary":
        """The `max_size - 4` most frequent words (ties alphabetical) after the four special tokens."""
        counts = Counter(word for doc in documents for word in doc)
        for special in SPECIALS:
            counts.pop(special, None)
        ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
        return cls([*SPECIALS, *(word for word, _ in ranked[: max(0, max_size - len(SPECIALS))])])

    @classmethod
    def read(cls, path: Path) -> "Vocabulary":
        """A vocabulary file: one word per line (the special tokens are added in front when absent), or
        `word<TAB>id` lines with ids 0, 1, 2, ... in order (the format `save` writes)."""
        if not path.exists():
            raise DataError(f"vocabulary file {path} does not exist")
        try:
            lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        except UnicodeDecodeError as error:
            raise DataError(f"vocabulary file {path} is not UTF-8 text ({error})") from error
        if not lines:
            raise DataError(f"vocabulary file {path} is empty")
        fields = [line.split() for line in lines]
        if all(len(f) == 1 for f in fields):
            words = [f[0] for f in fields]
            missing = [s for s in SPECIALS if s not in words]
            if any(s in words for s in SPECIALS[:3]) and words[:3] != list(SPECIALS[:3]):
                raise DataError(f"vocabulary file {path}: {PAD}, {BOS}, {EOS} must be its first three lines")
            return cls([*(s for s in SPECIALS[:3] if s in missing), *words, *([UNK] if UNK in missing else [])])
        words = []
        for number, f in enumerate(fields, 1):
            if len(f) != 2 or not f[1].isdigit() or int(f[1]) != number - 1:
                raise DataError(
                    f"vocabulary file {path}, line {number}: expected `word<TAB>{number - 1}` (ids counting from 0 "
                    f"in file order) or one word per line, got {lines[number - 1]!r}"
                )
            words.append(f[0])
        return cls(words)

    def save(self, path: Path) -> None:
        path.write_text("".join(f"{word}\t{i}\n" for i, word in enumerate(self.words)), encoding="utf-8")

    def encode(self, document: list[str]) -> tuple[torch.Tensor, int]:
        """`<bos> ids <eos>` as a LongTensor, and how many words were unknown (mapped to `_UNK`)."""
        ids = [self.ids.get(word, self.unk_id) for word in document]
        unknown = sum(1 for word in document if word not in self.ids)
        return torch.tensor([self.ids[BOS], *ids, self.ids[EOS]], dtype=torch.long), unknown

    def decode(self, ids: list[int]) -> str:
        """Words of one id sequence: `<bos>` and `<pad>` dropped, stopped at `<eos>`."""
        words = []
        for i in ids:
            if i == self.ids[EOS]:
                break
            if i not in (self.ids[PAD], self.ids[BOS]):
                words.append(self.words[i] if 0 <= i < len(self.words) else UNK)
        return " ".join(words)


Batching = Literal["padded", "same_length"]


class BucketedDocuments(Dataset):
    """Item i is the i-th batch of documents of similar length. "padded": the documents sorted by length (file order
    within a length) and cut every `batch_size`, so a batch spans a few lengths and is padded. "same_length": the
    batching of the authors' text code (sa-vae `preprocess_text.py`): the documents shuffled once (here by `seed`),
    sorted by length and cut every `batch_size` within each length, so every batch holds documents of one length
    and a length's last batch is partial."""

    def __init__(
        self, documents: list[torch.Tensor], batch_size: int, pad_id: int, batching: Batching = "padded", seed: int = 0
    ):
        self.documents, self.pad_id = documents, pad_id
        lengths = torch.tensor([len(doc) for doc in documents], dtype=torch.long)
        if batching == "padded":
            order = torch.sort(lengths, stable=True).indices
            self.batches = list(torch.split(order, batch_size))
            return
        shuffled = torch.randperm(len(documents), generator=torch.Generator().manual_seed(seed))
        order = shuffled[torch.sort(lengths[shuffled], stable=True).indices]
        self.batches = [
            batch
            for length in torch.unique(lengths).tolist()
            for batch in torch.split(order[lengths[order] == length], batch_size)
        ]

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        index = self.batches[i]
        docs = [self.documents[j] for j in index.tolist()]
        x = torch.nn.utils.rnn.pad_sequence(docs, batch_first=True, padding_value=self.pad_id)
        return {"x": x, "index": index}


class YahooDataModule(SkipVAEDataModule):
    """Yahoo Answers documents as padded token batches for the LSTM models."""

    dataset_name = "yahoo"
    example_name = "documents"
    prebatched = True  # BucketedDocuments items are whole batches of similar length

    def __init__(
        self,
        train_file: str = "train.txt",
        val_file: str = "valid.txt",
        test_file: str = "test.txt",
        val_split: NonNegativeInt = 0,
        vocab_file: str | None = None,
        max_vocab: PositiveInt = 20000,
        batch_size: PositiveInt = 32,
        eval_batch_size: PositiveInt = 32,
        batching: Batching = "padded",
        **kwargs,
    ):
        """
        Args:
            train_file, val_file, test_file: file names in `<data dir>/yahoo/` (or paths).
            val_split: when > 0, validate on this many documents of train_file (a seeded random choice, removed
                from training) instead of reading val_file.
            vocab_file: read the vocabulary from this file instead of building it from train_file.
            max_vocab: vocabulary size, special tokens included, when built from train_file.
            batch_size: training documents per batch.
            eval_batch_size: validation/test documents per batch: changes only the minibatch MI (`mi_batch`) and
                the SA models' SVI.
            batching: "padded" (documents sorted by length, cut every batch size, padded) or "same_length" (the
                authors': batches of documents of one length, a length's last batch partial; `split_seed` shuffles
                the documents within a length), for every split; either way the batch order is shuffled each
                training epoch.
        """
        super().__init__(batch_size=batch_size, eval_batch_size=eval_batch_size, **kwargs)
        self._vocabulary: Vocabulary | None = None
        self._documents: dict[str, tuple[list[list[str]], int]] = {}

    # ------------------------------------------------------------ files
    def _path(self, name: str) -> Path:
        path = Path(name) if Path(name).is_absolute() else self.folder / name
        remote = YAHOO_FILES.get(path.name) if path.parent == self.folder else None
        if remote is not None:
            return fetch(self.folder, remote, download=self.hparams.download, check=self.hparams.check_file)
        if not path.exists():
            raise DataError(f"missing data file {path}: expected one tokenized document per line.")
        return path

    def _read(self, name: str) -> tuple[list[list[str]], int]:
        if name not in self._documents:
            self._documents[name] = read_documents(self._path(name))
        return self._documents[name]

    @property
    def vocabulary(self) -> Vocabulary:
        if self._vocabulary is None:
            hp = self.hparams
            if hp.vocab_file:
                path = Path(hp.vocab_file)
                self._vocabulary = Vocabulary.read(path if path.is_absolute() or path.exists() else self.folder / path)
            else:
                self._vocabulary = Vocabulary.build(self._read(hp.train_file)[0], hp.max_vocab)
        return self._vocabulary

    @property
    def data_dims(self) -> list[int]:
        """[vocabulary size], linked to the model's `data_dims`."""
        return [len(self.vocabulary)]

    @property
    def text_format(self) -> dict[str, int]:
        """The ids of `<pad>`, `<bos>` and `<eos>`, and the most tokens a decoder predicts in a document of any split
        (its words and `<eos>`), linked to the model's `text_format`."""
        ids, hp = self.vocabulary.ids, self.hparams
        files = dict.fromkeys([hp.train_file, *([] if hp.val_split else [hp.val_file]), hp.test_file])
        longest = max(len(doc) for name in files for doc in self._read(name)[0]) + 1
        return {"pad": ids[PAD], "bos": ids[BOS], "eos": ids[EOS], "longest": longest}

    def count_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """The tokens a decoder predicts in each row of a batch: the words and `<eos>`, not `<bos>` or `<pad>`."""
        return (tokens[:, 1:] != self.vocabulary.ids[PAD]).sum(1)

    def prepare_data(self) -> None:
        hp = self.hparams
        for name in dict.fromkeys([hp.train_file, *([] if hp.val_split else [hp.val_file]), hp.test_file]):
            self._path(name)

    # ------------------------------------------------------------ set-up
    def _encode(self, name: str, documents: list[list[str]], blank: int) -> list[torch.Tensor]:
        encoded, unknown = [], 0
        for doc in documents:
            ids, n = self.vocabulary.encode(doc)
            encoded.append(ids)
            unknown += n
        words = sum(len(doc) for doc in documents)
        rank_zero_info(
            f"{name}: {len(documents)} documents, {words} words, {unknown} unknown words mapped to "
            f"{UNK} ({100 * unknown / max(words, 1):.2f}%), {blank} blank lines skipped"
        )
        return encoded

    def num_training_examples(self) -> int:
        return len(self.datasets["train"].documents)

    def load_splits(self) -> dict[str, BucketedDocuments]:
        hp = self.hparams
        train_docs, blank = self._read(hp.train_file)
        train = self._encode(hp.train_file, train_docs, blank)
        if hp.val_split > 0:
            if hp.val_split >= len(train):
                raise DataError(
                    f"val_split={hp.val_split} leaves no training documents in {hp.train_file} ({len(train)} documents)"
                )
            order = torch.randperm(len(train), generator=torch.Generator().manual_seed(hp.split_seed)).tolist()
            val = [train[i] for i in order[: hp.val_split]]
            train = [train[i] for i in sorted(order[hp.val_split :])]
        else:
            val = self._encode(hp.val_file, *self._read(hp.val_file))
        test = self._encode(hp.test_file, *self._read(hp.test_file))
        batches = partial(BucketedDocuments, pad_id=self.vocabulary.ids[PAD], batching=hp.batching, seed=hp.split_seed)
        datasets = {
            "train": batches(train, hp.batch_size),
            "val": batches(val, hp.eval_batch_size),
            "test": batches(test, hp.eval_batch_size),
        }
        for split, dataset in datasets.items():
            if len(dataset) == 0:
                raise DataError(f"the {split} split has no documents")
        return datasets

    def setup(self, stage: str | None = None) -> None:
        super().setup(stage)
        trainer = getattr(self, "trainer", None)
        if stage == "fit" and trainer is not None:
            log_dir = trainer.log_dir  # a collective under DDP: every process asks, rank zero writes
            if trainer.is_global_zero and log_dir is not None:
                Path(log_dir).mkdir(parents=True, exist_ok=True)
                self.vocabulary.save(Path(log_dir) / "vocab.txt")

    def decode(self, tokens: torch.Tensor) -> list[str]:
        """Text of each row of a token batch."""
        return [self.vocabulary.decode(row) for row in tokens.tolist()]

    # ------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict:
        return {"vocabulary": self.vocabulary.words}

    def load_state_dict(self, state_dict: dict) -> None:
        """Use the checkpoint's vocabulary, so words map to the ids the model was trained with."""
        saved = Vocabulary(state_dict["vocabulary"])
        if saved == self.vocabulary:
            return
        if len(saved) != len(self.vocabulary):
            raise DataError(
                f"the checkpoint's vocabulary has {len(saved)} words but the data's has "
                f"{len(self.vocabulary)}; pass the training run's vocab.txt as --data.init_args.vocab_file"
            )
        rank_zero_warn("the checkpoint's vocabulary differs from the one built from the data; using the checkpoint's")
        self._vocabulary = saved
        self.datasets = {}
        self.setup()
