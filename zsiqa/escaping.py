"""Text from the user or the file system (method, image and folder names, paths) made safe for
each file format we write, so that it never changes the file's structure: one line
(`one_line`), Markdown shown literally (`markdown_name`), LaTeX typeset literally (`tex`,
`tex_name`), and a two-line LaTeX cell (`stack_cell`). HTML is escaped by the templates
(jinja2's autoescape), CSV cells by the results store (results.to_cell).
"""


def markdown_name(text):
    """A method's name (or any text from the user or the file system) as Markdown shows it
    literally, on one line: every character that could start markup (emphasis, a link, an HTML
    tag or entity, a cell's end, a heading, math) escaped with a backslash."""
    return "".join("\\" + ch if ch in "\\`*_[]<>|~&#$" else ch for ch in one_line(text))



def one_line(text):
    """Text with every line break (\\n, \\r and the other characters Python, TeX or a browser may
    break a line at) and other control character made a space: it cannot end a comment, a table
    row or a line of a file we write."""
    return "".join(" " if ch in "\x85\u2028\u2029" or ord(ch) < 32 or ord(ch) == 127 else ch for ch in str(text))


TEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
       "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "<": r"\textless{}",
       ">": r"\textgreater{}", "|": r"\textbar{}",  # < > | print as ¡ ¿ — in LaTeX's default font encoding
       "`": r"\textasciigrave{}", "'": r"\textquotesingle{}",  # ` ' " would print as curly quotes
       '"': r"\textquotedbl{}"}  # (and " is a command under babel's German)
LIGATURES = "-,"  # -- and ---, ,, join into dashes and a low quote: a {} after the first keeps them apart


def tex(text):
    """Text as LaTeX typesets it literally (method names may hold _, &, %, --)."""
    text = one_line(text)  # a line break would end a comment (\\input{…} on a live line) or a row
    return "".join(TEX.get(ch, ch) + ("{}" if ch in LIGATURES and text[i + 1:i + 2] == ch else "")
                   for i, ch in enumerate(text))


def tex_name(text, short=12):
    """A method's name for a narrow table cell: `tex`, and in a name longer than `short`
    characters a break allowed after each one (a long name wraps in its column instead of
    widening the table)."""
    text = one_line(text)
    return tex(text) if len(text) <= short else r"\allowbreak{}".join(tex(ch) for ch in text)


def stack_cell(top, bottom):
    """Two lines in one right-aligned cell (a value above its interval): base LaTeX only; the
    second line braced, so that a '[' there is not read as \\'s optional argument."""
    return rf"\begin{{tabular}}[t]{{@{{}}r@{{}}}}{top}\\ {{{bottom}}}\end{{tabular}}"
