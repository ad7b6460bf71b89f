import azure.functions as func


def main(msg: func.QueueMessage) -> None:
    raise NotImplementedError
