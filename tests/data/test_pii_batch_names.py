"""The PII step finds names a batch at a time; the result equals masking one text at a time."""

from lmforge.data.document import Document
from lmforge.data.names import find_person_names
from lmforge.data.names.batch import find_person_names_batch
from lmforge.data.steps.pii import PiiMasker

TEXTS = [
    "昨天张伟和李娜去了北京，电话13812345678。",
    "Call John Smith at the office about the refund.",
    "这款耳机音质不错，佩戴也很舒服。",
    "客服王芳回复很及时！Mr. David Brown also helped.",
    "no names here, just a kettle that boils fast",
]


def _run(masker: PiiMasker, texts: list[str]) -> list[str]:
    docs = [Document(id=str(i), text=t, source="t") for i, t in enumerate(texts)]
    return [d.text for d in masker.run(docs, lambda *a: None)]


def test_batched_names_equal_one_text_at_a_time():
    texts = TEXTS * 60  # more than one batch
    batched = PiiMasker(batch_name_finder=find_person_names_batch)
    single = PiiMasker(name_finder=find_person_names)
    assert _run(batched, texts) == _run(single, texts)
    assert batched.stats.events == single.stats.events
    assert batched.stats.events["NAME"] >= 4 * 60


def test_batch_finder_masks_names_in_judged_content_too():
    doc = Document(
        id="r1",
        text="kettle (kitchen): 昨天张伟和李娜去了北京",
        source="t",
        content="昨天张伟和李娜去了北京",
    )
    out = list(PiiMasker(batch_name_finder=find_person_names_batch).run([doc], lambda *a: None))
    assert "张伟" not in out[0].text and "张伟" not in out[0].content
