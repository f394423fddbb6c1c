"""YahooDataModule: vocabulary, documents, bucketing, padding, checkpointed vocabulary and bad files."""

from collections import Counter

import pytest
import torch
from fixtures import write_documents, write_yahoo

from datamodules import YahooDataModule
from datamodules.files import DataError
from datamodules.yahoo import BucketedDocuments, Vocabulary, read_documents


@pytest.fixture
def yahoo_dir(tmp_path):
    write_yahoo(tmp_path / "yahoo")
    return tmp_path


def make(data_dir, **kwargs) -> YahooDataModule:
    dm = YahooDataModule(data_dir=str(data_dir), download=False, check_file=False, **kwargs)
    dm.prepare_data()
    dm.setup("fit")
    return dm


class TestVocabulary:
    def test_built_by_frequency_with_specials_first(self):
        docs = [["b", "a", "b", "c"], ["c", "b", "_UNK", "d"]]
        vocab = Vocabulary.build(docs, max_size=6)
        assert vocab.words == ["<pad>", "<bos>", "<eos>", "_UNK", "b", "c"]  # b:3, c:2, then a/d tie cut off
        ids, unknown = vocab.encode(["b", "zzz", "a"])
        assert ids.tolist() == [1, 4, 3, 3, 2] and unknown == 2

    def test_ties_are_alphabetical(self):
        assert Vocabulary.build([["y", "x", "z"]], max_size=10).words[4:] == ["x", "y", "z"]

    def test_reads_word_per_line_and_indexed_files(self, tmp_path):
        (tmp_path / "words.txt").write_text("why\nis\n_UNK\n")
        assert Vocabulary.read(tmp_path / "words.txt").words == ["<pad>", "<bos>", "<eos>", "why", "is", "_UNK"]
        vocab = Vocabulary(["<pad>", "<bos>", "<eos>", "_UNK", "hello"])
        vocab.save(tmp_path / "saved.txt")
        assert Vocabulary.read(tmp_path / "saved.txt") == vocab

    def test_reads_the_published_vocabulary_formats(self, tmp_path):
        """The two formats the published Yahoo vocabularies use: `word<TAB>index` lines starting with the three
        specials (`_UNK` 3), and one word per line without specials."""
        words = ["_UNK", ".", "the", "?"]
        (tmp_path / "indexed.txt").write_text(
            "".join(f"{w}\t{i}\n" for i, w in enumerate(["<pad>", "<bos>", "<eos>", *words]))
        )
        (tmp_path / "plain.txt").write_text("".join(f"{w}\n" for w in ["the", "_UNK", "?", "."]))
        indexed, plain = Vocabulary.read(tmp_path / "indexed.txt"), Vocabulary.read(tmp_path / "plain.txt")
        assert len(indexed) == 7 and indexed.words[3:5] == ["_UNK", "."]
        assert len(plain) == 7 and set(plain.words) == set(indexed.words)

    @pytest.mark.parametrize(
        "content, message",
        [
            ("", "is empty"),
            ("<pad>\t0\n<bos>\t1\n<eos>\t2\n_UNK\tx\n", "line 4: expected `word<TAB>3`"),
            ("<pad>\t0\n<bos>\t1\n<eos>\t2\n_UNK\t5\n", "line 4"),
            ("a b c\n", "line 1"),
            ("<pad>\t0\n<bos>\t1\n<eos>\t2\n_UNK\t3\nx\t4\nx\t5\n", "twice"),
            ("a\n<pad>\n<bos>\n<eos>\n", "must be its first three lines"),
        ],
    )
    def test_malformed_files(self, tmp_path, content, message):
        (tmp_path / "vocab.txt").write_text(content)
        with pytest.raises(DataError, match=message):
            Vocabulary.read(tmp_path / "vocab.txt")

    def test_decode_stops_at_eos_and_drops_specials(self):
        vocab = Vocabulary(["<pad>", "<bos>", "<eos>", "_UNK", "hi", "there"])
        assert vocab.decode([1, 4, 5, 3, 2, 4, 0]) == "hi there _UNK"


class TestDocuments:
    def test_blank_lines_are_skipped_and_counted(self, tmp_path):
        write_documents(tmp_path / "d.txt", 100, seed=0, blank_every=25)
        docs, blank = read_documents(tmp_path / "d.txt")
        assert len(docs) == 100 and blank == 4

    @pytest.mark.parametrize("content", ["", "\n\n  \n"])
    def test_empty_file(self, tmp_path, content):
        (tmp_path / "e.txt").write_text(content)
        with pytest.raises(DataError, match="empty or holds only blank lines"):
            read_documents(tmp_path / "e.txt")

    def test_not_utf8(self, tmp_path):
        (tmp_path / "b.txt").write_bytes(b"caf\xe9 ok\n")
        with pytest.raises(DataError, match="not UTF-8"):
            read_documents(tmp_path / "b.txt")

    def test_bucketed_batches_have_similar_lengths_and_padding(self):
        docs = [
            torch.arange(1, n + 1) for n in torch.randint(3, 60, (101,), generator=torch.Generator().manual_seed(0))
        ]
        dataset = BucketedDocuments(docs, batch_size=10, pad_id=0)
        assert len(dataset) == 11
        seen = []
        for i in range(len(dataset)):
            batch = dataset[i]
            lengths = (batch["x"] != 0).sum(1)
            assert int(lengths.max()) == batch["x"].shape[1]
            for row, j in zip(batch["x"], batch["index"].tolist()):  # each row is its document, then padding
                assert torch.equal(row[: len(docs[j])], docs[j]) and not row[len(docs[j]) :].any()
            seen += batch["index"].tolist()
        assert sorted(seen) == list(range(101))  # every document exactly once
        spans = [
            int((dataset[i]["x"] != 0).sum(1).max() - (dataset[i]["x"] != 0).sum(1).min()) for i in range(len(dataset))
        ]
        assert sum(spans) <= 60  # sorted by length: a batch's lengths differ little


class TestTheAuthorsBatches:
    """`batching: same_length`: the batches of the authors' `preprocess_text.py`."""

    @staticmethod
    def documents() -> list[torch.Tensor]:
        lengths = torch.randint(3, 9, (101,), generator=torch.Generator().manual_seed(0))
        return [torch.arange(1, int(n) + 1) for n in lengths]

    def test_one_length_per_batch_and_every_partial_batch_kept(self):
        docs = self.documents()
        dataset = BucketedDocuments(docs, batch_size=4, pad_id=0, batching="same_length", seed=3)
        per_length = Counter(len(doc) for doc in docs)
        assert len(dataset) == sum(-(-count // 4) for count in per_length.values())  # ceil per length
        partial = Counter()
        seen = []
        for i in range(len(dataset)):
            batch = dataset[i]
            lengths = {len(docs[j]) for j in batch["index"].tolist()}
            assert len(lengths) == 1 and batch["x"].shape[1] == lengths.pop() and batch["x"].all()  # no padding
            assert len(batch["index"]) <= 4
            if len(batch["index"]) < 4:
                partial[batch["x"].shape[1]] += 1
            seen += batch["index"].tolist()
        assert sorted(seen) == list(range(101))  # every document exactly once
        assert partial == Counter({n: 1 for n, count in per_length.items() if count % 4})  # one per length, if any

    def test_the_order_within_a_length_is_shuffled_by_the_seed(self):
        docs = self.documents()
        batches = [BucketedDocuments(docs, 4, 0, "same_length", seed).batches for seed in (3, 3, 4)]
        assert all(torch.equal(a, b) for a, b in zip(batches[0], batches[1]))  # the same split, the same batches
        assert not all(torch.equal(a, b) for a, b in zip(batches[0], batches[2]))
        padded = BucketedDocuments(docs, 4, 0, "padded").batches
        assert any(len({len(docs[j]) for j in batch.tolist()}) > 1 for batch in padded)  # padded batches mix lengths

    def test_each_epoch_covers_every_training_document_once_in_another_batch_order(self, yahoo_dir):
        dm = make(yahoo_dir, batching="same_length", batch_size=8)
        epochs = []
        for seed in (1, 2):
            torch.manual_seed(seed)
            epochs.append([batch["index"].tolist() for batch in dm.train_dataloader()])
        for epoch in epochs:
            assert sorted(i for batch in epoch for i in batch) == list(range(200))
        assert epochs[0] != epochs[1] and sorted(epochs[0]) == sorted(epochs[1])  # the same batches, reordered

    def test_two_processes_share_the_evaluation_batches_without_repeating_one(self, yahoo_dir):
        """Under DDP each process evaluates a disjoint shard of the batches (never a repeated example)."""
        from types import SimpleNamespace

        dm = make(yahoo_dir, batching="same_length", eval_batch_size=8)
        shards = []
        for rank in (0, 1):
            dm.trainer = SimpleNamespace(world_size=2, global_rank=rank)
            shards.append([i for batch in dm.val_dataloader() for i in batch["index"].tolist()])
        assert not set(shards[0]) & set(shards[1]) and sorted(shards[0] + shards[1]) == list(range(40))


class TestDataModule:
    def test_splits_vocabulary_and_batches(self, yahoo_dir):
        dm = make(yahoo_dir, batch_size=16, eval_batch_size=8)
        assert sum(len(b) for b in dm.datasets["train"].batches) == 200
        assert sum(len(b) for b in dm.datasets["test"].batches) == 40
        assert dm.data_dims == [len(dm.vocabulary)] == [4 + 19]  # 20 fixture words, _UNK among them
        batch = next(iter(dm.train_dataloader()))
        assert batch["x"].dtype == torch.long and batch["x"].shape[0] == 16
        assert (batch["x"][:, 0] == 1).all()  # <bos>
        assert ((batch["x"] == 2).sum(1) == 1).all()  # one <eos> per document

    def test_the_text_format_and_the_predicted_tokens(self, yahoo_dir):
        """What the networks are told (the special tokens' ids, the longest document in predicted tokens) and the
        perplexity's denominator: the words and <eos> of each document, not <bos> or <pad>."""
        dm = make(yahoo_dir)
        longest = max(
            len(doc)
            for name in ("train.txt", "valid.txt", "test.txt")
            for doc in read_documents(yahoo_dir / "yahoo" / name)[0]
        )
        assert dm.text_format == {"pad": 0, "bos": 1, "eos": 2, "longest": longest + 1}
        tokens = torch.tensor([[1, 7, 8, 2, 0, 0], [1, 9, 9, 9, 9, 2]])
        assert dm.count_tokens(tokens).tolist() == [3, 5]

    def test_unknown_test_words_map_to_unk(self, yahoo_dir):
        dm = make(yahoo_dir)
        text = " ".join(dm.decode(torch.cat([dm.datasets["test"][i]["x"] for i in range(1)])))
        assert "zebra" not in dm.vocabulary.ids and "zebra" not in text
        docs, _ = read_documents(yahoo_dir / "yahoo" / "test.txt")
        n_unknown = sum(Counter(w for d in docs for w in d)[w] for w in ("zebra", "quokka"))
        encoded = torch.cat([dm.datasets["test"].documents[i] for i in range(40)])
        assert int((encoded == dm.vocabulary.unk_id).sum()) == n_unknown + sum(d.count("_UNK") for d in docs)

    def test_val_split_holds_out_training_documents(self, yahoo_dir):
        dm = make(yahoo_dir, train_file="valid.txt", val_split=10)
        assert sum(len(b) for b in dm.datasets["val"].batches) == 10
        assert sum(len(b) for b in dm.datasets["train"].batches) == 30

    def test_checkpoint_vocabulary_is_used_for_test(self, yahoo_dir):
        trained = make(yahoo_dir)
        state = trained.state_dict()
        # the same size, a different order: a machine that built its vocabulary differently
        shuffled = Vocabulary(state["vocabulary"][:4] + state["vocabulary"][4:][::-1])
        shuffled.save(yahoo_dir / "other_vocab.txt")
        other = make(yahoo_dir, vocab_file=str(yahoo_dir / "other_vocab.txt"))
        assert other.vocabulary != trained.vocabulary
        with pytest.warns(UserWarning, match="checkpoint's vocabulary"):
            other.load_state_dict(state)
        assert other.vocabulary == trained.vocabulary
        assert torch.equal(other.datasets["test"][0]["x"], trained.datasets["test"][0]["x"])

    def test_vocabulary_size_mismatch(self, yahoo_dir):
        dm = make(yahoo_dir)
        with pytest.raises(DataError, match="vocab_file"):
            dm.load_state_dict({"vocabulary": dm.vocabulary.words + ["extra"]})

    def test_missing_official_file_names_url(self, tmp_path):
        dm = YahooDataModule(data_dir=str(tmp_path), download=False)
        with pytest.raises(DataError, match=r"train\.txt.*https://raw\.githubusercontent\.com/harvardnlp"):
            dm.prepare_data()

    @pytest.mark.real_data
    def test_real_stand_in_split(self):
        dm = YahooDataModule(train_file="valid.txt", val_split=1000, test_file="test.txt", download=False)
        dm.setup("fit")
        assert sum(len(b) for b in dm.datasets["train"].batches) == 9000
        assert sum(len(b) for b in dm.datasets["val"].batches) == 1000
        assert sum(len(b) for b in dm.datasets["test"].batches) == 10000
        assert len(dm.vocabulary) == 4 + 17043  # the distinct words of valid.txt besides _UNK
