"""The rag stage: index documents, retrieve chunks for a query, measure retrieval.

    from llmkit.rag import index, retrieve
    index(RagConfig(sources=["examples/support/docs"]), Path("runs/x/rag"))
    for hit in retrieve(Path("runs/x/rag"), "How do I reset the R2?"):
        print(hit.rank, hit.source, hit.heading, hit.text)

ingest.py reads files, chunk.py cuts them, embed.py embeds, store.py holds vectors (LanceDB; or Qdrant, qdrant.py;
or a Milvus server, milvus.py), index.py is the stage, retrieve.py fuses dense and BM25 results, evaluate.py scores
retrieval on a question set.
"""

from llmkit.rag.evaluate import evaluate
from llmkit.rag.index import index
from llmkit.rag.retrieve import Hit, Index, open_index, retrieve

__all__ = ["Hit", "Index", "evaluate", "index", "open_index", "retrieve"]
