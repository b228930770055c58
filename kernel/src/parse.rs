//! The kernel-IR parser: reads what [`Kernel`]'s `Display` prints, so lowered kernels
//! round-trip as text and kernel filetests are written by hand. Errors carry `line:col`.
//!
//! ```text
//! kernel  := "kernel" @name "(" (param ("," param)*)? ")" "{" stmt* "}"
//! param   := ("in" | "out" | "scratch") name ":" dtype "[" dim "]"   (in buffer order)
//! stmt    := "for" vN "in" "0" ".." expr mark "{" stmt* "}"
//!          | vN ":" dtype "=" expr                     (a scalar variable)
//!          | name "[" expr "]" "=" expr                (a store)
//!          | "check" expr "else" integer                (a bool condition, a nonzero code)
//!          | "call" routine "(" operand ("," operand)* ";" (int ("=" expr)?)* ")"
//! operand := (name ":")? (buffer "[" expr "]" | "-")
//! mark    := "" | "parallel" | "vector(" n ")" | "unroll(" n ")"
//! expr    := "(" expr ("+" | "*") expr ")"             (i64 index arithmetic)
//!          | integer (":" dtype)? | float ":" dtype | "true" | "false"
//!          | "{" dim "}" | vN | buffer "[" expr "]"
//!          | "cast" "<" dtype ">" attrs? "(" expr ")"
//!          | mnemonic attrs? "(" expr ("," expr)* ")"
//! ```
//!
//! A line whose first non-blank character is `;` is a comment. Scalar ops take their result
//! dtype from their operands by the op's type rule (a cast from its `<dtype>`); `dim`s are
//! dimension expressions as types print them, and a kernel's dim table lists the `{dim}`s its
//! body reads in order of first appearance.

use ir::{AttrCtx, DType, Dim, Lit, Loc, Op, ParseError, Shape, Span, TensorType};

use crate::loops::{Buf, BufKind, Call, Expr, Kernel, Mark, Stmt, VarId};

/// A parsed kernel and where it sits in the text.
#[derive(Clone, Debug)]
pub struct Parsed {
    pub kernel: Kernel,
    pub span: Span,
}

/// Parses every kernel in `text`.
pub fn parse_kernels(text: &str) -> Result<Vec<Parsed>, ParseError> {
    let mut p = Parser::new(text)?;
    let mut out: Vec<Parsed> = Vec::new();
    while p.peek() != &Tok::Eof {
        let parsed = p.kernel()?;
        if out.iter().any(|k| k.kernel.name == parsed.kernel.name) {
            return err(
                parsed.span.start,
                format!("kernel @{} is defined twice", parsed.kernel.name),
            );
        }
        out.push(parsed);
    }
    Ok(out)
}

/// Parses a text holding exactly one kernel.
pub fn parse_kernel(text: &str) -> Result<Kernel, ParseError> {
    let mut ks = parse_kernels(text)?;
    match ks.len() {
        1 => Ok(ks.remove(0).kernel),
        n => err(
            Loc { line: 1, col: 1 },
            format!("expected exactly one kernel, found {n}"),
        ),
    }
}

fn err<T>(loc: Loc, message: impl Into<String>) -> Result<T, ParseError> {
    Err(ParseError {
        loc,
        message: message.into(),
    })
}

#[derive(Clone, Debug, PartialEq)]
enum Tok {
    Ident(String),
    /// A number as written, without sign.
    Num(String),
    /// `@name`
    At(String),
    /// `..`
    Range,
    Punct(char),
    Eof,
}

impl std::fmt::Display for Tok {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Tok::Ident(s) | Tok::Num(s) => write!(f, "`{s}`"),
            Tok::At(s) => write!(f, "`@{s}`"),
            Tok::Range => write!(f, "`..`"),
            Tok::Punct(c) => write!(f, "`{c}`"),
            Tok::Eof => write!(f, "end of input"),
        }
    }
}

/// Tokens with their position and byte range (dims are re-read from the source text).
fn lex(text: &str) -> Result<Vec<(Tok, Loc, usize, usize)>, ParseError> {
    let b = text.as_bytes();
    let (mut i, mut line, mut col, mut line_start) = (0, 1u32, 1u32, true);
    let mut out = Vec::new();
    while i < b.len() {
        let c = b[i] as char;
        let loc = Loc { line, col };
        let start = i;
        if c == '\n' {
            (i, line, col, line_start) = (i + 1, line + 1, 1, true);
            continue;
        }
        if c.is_ascii_whitespace() {
            (i, col) = (i + 1, col + 1);
            continue;
        }
        if c == ';' && line_start {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
            continue;
        }
        line_start = false;
        let word =
            |i: usize, f: fn(u8) -> bool| (i..b.len()).find(|&j| !f(b[j])).unwrap_or(b.len());
        let name = |c: u8| c.is_ascii_alphanumeric() || c == b'_' || c == b'.';
        let tok = if c.is_ascii_alphabetic() || c == '_' {
            i = word(i, name);
            Tok::Ident(text[start..i].to_string())
        } else if c.is_ascii_digit() {
            i = word(i, |c| c.is_ascii_digit());
            if b.get(i) == Some(&b'.') && b.get(i + 1).is_some_and(u8::is_ascii_digit) {
                i = word(i + 1, |c| c.is_ascii_digit());
            }
            if matches!(b.get(i), Some(b'e' | b'E')) {
                let sign = usize::from(matches!(b.get(i + 1), Some(b'+' | b'-')));
                if b.get(i + 1 + sign).is_some_and(u8::is_ascii_digit) {
                    i = word(i + 1 + sign, |c| c.is_ascii_digit());
                }
            }
            Tok::Num(text[start..i].to_string())
        } else if c == '@' {
            i = word(i + 1, name);
            if i == start + 1 {
                return err(loc, "expected a name after `@`");
            }
            Tok::At(text[start + 1..i].to_string())
        } else if c == '.' && b.get(i + 1) == Some(&b'.') {
            i += 2;
            Tok::Range
        } else if "()[]{}<>,:;=+*-/".contains(c) {
            i += 1;
            Tok::Punct(c)
        } else {
            let ch = text[i..].chars().next().unwrap_or(c);
            return err(loc, format!("unexpected character {ch:?}"));
        };
        col += (i - start) as u32;
        out.push((tok, loc, start, i));
    }
    out.push((Tok::Eof, Loc { line, col }, b.len(), b.len()));
    Ok(out)
}

/// Bounds the nesting of statements and expressions, so hostile input cannot overflow the
/// stack.
const MAX_DEPTH: usize = 200;

struct Parser<'a> {
    text: &'a str,
    toks: Vec<(Tok, Loc, usize, usize)>,
    pos: usize,
    depth: usize,
    /// The kernel being parsed: buffers, dims and variables so far.
    k: Kernel,
    declared: Vec<Option<DType>>,
}

impl<'a> Parser<'a> {
    fn new(text: &'a str) -> Result<Parser<'a>, ParseError> {
        Ok(Parser {
            text,
            toks: lex(text)?,
            pos: 0,
            depth: 0,
            k: empty(""),
            declared: Vec::new(),
        })
    }

    fn peek(&self) -> &Tok {
        &self.toks[self.pos].0
    }

    fn peek_at(&self, ahead: usize) -> &Tok {
        &self.toks[(self.pos + ahead).min(self.toks.len() - 1)].0
    }

    fn loc(&self) -> Loc {
        self.toks[self.pos].1
    }

    fn next(&mut self) -> (Tok, Loc) {
        let (t, loc, _, _) = self.toks[self.pos].clone();
        if self.pos + 1 < self.toks.len() {
            self.pos += 1;
        }
        (t, loc)
    }

    fn eat(&mut self, c: char) -> bool {
        let hit = *self.peek() == Tok::Punct(c);
        if hit {
            self.next();
        }
        hit
    }

    fn expect(&mut self, c: char) -> Result<Loc, ParseError> {
        match self.next() {
            (Tok::Punct(d), loc) if d == c => Ok(loc),
            (t, loc) => err(loc, format!("expected `{c}`, found {t}")),
        }
    }

    fn keyword(&mut self, kw: &str) -> Result<Loc, ParseError> {
        match self.next() {
            (Tok::Ident(s), loc) if s == kw => Ok(loc),
            (t, loc) => err(loc, format!("expected `{kw}`, found {t}")),
        }
    }

    fn ident(&mut self, what: &str) -> Result<(String, Loc), ParseError> {
        match self.next() {
            (Tok::Ident(s), loc) => Ok((s, loc)),
            (t, loc) => err(loc, format!("expected {what}, found {t}")),
        }
    }

    fn integer<T: std::str::FromStr>(&mut self, what: &str) -> Result<T, ParseError> {
        match self.next() {
            (Tok::Num(s), loc) => s
                .parse()
                .or_else(|_| err(loc, format!("{what} `{s}` is out of range"))),
            (t, loc) => err(loc, format!("expected {what}, found {t}")),
        }
    }

    fn dtype(&mut self) -> Result<DType, ParseError> {
        let (s, loc) = self.ident("a dtype")?;
        DType::from_name(&s).ok_or_else(|| ParseError {
            loc,
            message: format!("unknown dtype `{s}`"),
        })
    }

    fn nest(&mut self) -> Result<(), ParseError> {
        self.depth += 1;
        match self.depth > MAX_DEPTH {
            true => err(self.loc(), "nesting is too deep"),
            false => Ok(()),
        }
    }

    /// The dimension expression up to the `close` bracket matching the one just read.
    fn dim(&mut self, close: char) -> Result<Dim, ParseError> {
        let (start, loc) = (self.toks[self.pos].2, self.loc());
        let open = match close {
            ']' => '[',
            _ => '{',
        };
        let mut depth = 0;
        loop {
            match self.peek() {
                Tok::Punct(c) if *c == close && depth == 0 => break,
                Tok::Punct(c) if *c == open || *c == '(' => depth += 1,
                Tok::Punct(c) if *c == close || *c == ')' => depth -= 1,
                Tok::Eof => return err(self.loc(), format!("expected `{close}`")),
                _ => {}
            }
            self.next();
        }
        let end = self.toks[self.pos].2;
        self.next();
        ir::parse_dim(&self.text[start..end]).map_err(|e| ParseError {
            loc: Loc {
                line: loc.line + e.loc.line - 1,
                col: if e.loc.line == 1 {
                    loc.col + e.loc.col - 1
                } else {
                    e.loc.col
                },
            },
            message: e.message,
        })
    }

    /// `name: dtype[dim]` of a buffer.
    fn buf(&mut self, kind: BufKind) -> Result<(), ParseError> {
        let (name, loc) = self.ident("a buffer name")?;
        if self.k.bufs.iter().any(|b| b.name == name) {
            return err(loc, format!("buffer `{name}` is declared twice"));
        }
        self.expect(':')?;
        let dtype = self.dtype()?;
        self.expect('[')?;
        let len = self.dim(']')?;
        self.k.bufs.push(Buf {
            name,
            dtype,
            len,
            kind,
        });
        Ok(())
    }

    fn kernel(&mut self) -> Result<Parsed, ParseError> {
        let start = self.keyword("kernel")?;
        let name = match self.next() {
            (Tok::At(s), _) => s,
            (t, loc) => return err(loc, format!("expected a kernel name, found {t}")),
        };
        self.k = empty(&name);
        self.declared.clear();
        self.expect('(')?;
        if !self.eat(')') {
            loop {
                let (dir, loc) = self.ident("`in`, `out` or `scratch`")?;
                let kind = match dir.as_str() {
                    "in" => BufKind::Input,
                    "out" => BufKind::Output,
                    "scratch" => BufKind::Scratch,
                    _ => {
                        return err(
                            loc,
                            format!("expected `in`, `out` or `scratch`, found `{dir}`"),
                        )
                    }
                };
                self.buf(kind)?;
                if self.eat(')') {
                    break;
                }
                self.expect(',')?;
            }
        }
        self.expect('{')?;
        let body = self.block()?;
        let end = self.toks[self.pos.saturating_sub(1)].1;
        self.k.body = body;
        self.k.vars = self
            .declared
            .iter()
            .map(|d| d.unwrap_or(DType::I64))
            .collect();
        let kernel = std::mem::replace(&mut self.k, empty(""));
        kernel.check_ids().or_else(|m| err(start, m.to_string()))?;
        Ok(Parsed {
            kernel,
            span: Span { start, end },
        })
    }

    /// Statements up to the closing brace.
    fn block(&mut self) -> Result<Vec<Stmt>, ParseError> {
        self.nest()?;
        let mut body = Vec::new();
        while !self.eat('}') {
            body.push(self.stmt()?);
        }
        self.depth -= 1;
        Ok(body)
    }

    fn var(&mut self, s: &str, loc: Loc) -> Result<VarId, ParseError> {
        match s.strip_prefix('v').map(str::parse::<VarId>) {
            Some(Ok(v)) if v < 1 << 20 => Ok(v),
            _ => err(loc, format!("expected a variable `vN`, found `{s}`")),
        }
    }

    /// Declares variable `v` of `dtype` (a loop index or the first assignment of a scalar).
    fn declare(&mut self, v: VarId, dtype: DType, loc: Loc) -> Result<(), ParseError> {
        if self.declared.len() <= v {
            self.declared.resize(v + 1, None);
        }
        match self.declared[v] {
            Some(d) if d != dtype => err(loc, format!("v{v} is {d}, not {dtype}")),
            _ => {
                self.declared[v] = Some(dtype);
                Ok(())
            }
        }
    }

    fn stmt(&mut self) -> Result<Stmt, ParseError> {
        let (word, loc) = self.ident("a statement")?;
        match word.as_str() {
            "for" => {
                let (v, vloc) = self.ident("a loop variable")?;
                let var = self.var(&v, vloc)?;
                self.declare(var, DType::I64, vloc)?;
                self.keyword("in")?;
                if self.integer::<i64>("`0`")? != 0 {
                    return err(vloc, "loops start at 0");
                }
                match self.next() {
                    (Tok::Range, _) => {}
                    (t, l) => return err(l, format!("expected `..`, found {t}")),
                }
                let extent = self.index()?;
                let mark = match self.peek().clone() {
                    Tok::Ident(m) if m == "parallel" => {
                        self.next();
                        Mark::Parallel
                    }
                    Tok::Ident(m) if m == "vector" || m == "unroll" => {
                        self.next();
                        self.expect('(')?;
                        let n = self.integer("a width")?;
                        self.expect(')')?;
                        match m.as_str() {
                            "vector" => Mark::Vector(n),
                            _ => Mark::Unroll(n),
                        }
                    }
                    _ => Mark::Serial,
                };
                self.expect('{')?;
                let body = self.block()?;
                Ok(Stmt::Loop {
                    var,
                    extent,
                    mark,
                    body,
                })
            }
            "check" => {
                let at = self.loc();
                let cond = self.expr()?;
                self.typed(&cond, DType::Bool, at)?;
                self.keyword("else")?;
                let at = self.loc();
                let code = self.integer("a code")?;
                if code == 0 {
                    return err(at, "a check ends the kernel with a nonzero code");
                }
                Ok(Stmt::Check { cond, code })
            }
            "call" => self.call(None).map(|c| Stmt::Call(Box::new(c))),
            _ if self.eat(':') => {
                let var = self.var(&word, loc)?;
                let dtype = self.dtype()?;
                self.declare(var, dtype, loc)?;
                self.expect('=')?;
                if *self.peek() == Tok::Ident("call".into()) {
                    self.next();
                    let c = self.call(Some((var, dtype)))?;
                    return Ok(Stmt::Call(Box::new(c)));
                }
                let value = self.expr()?;
                self.typed(&value, dtype, loc)?;
                Ok(Stmt::Set { var, value })
            }
            _ => {
                let buf = self.buffer(&word, loc)?;
                self.expect('[')?;
                let index = self.index()?;
                self.expect(']')?;
                self.expect('=')?;
                let value = self.expr()?;
                self.typed(&value, self.k.bufs[buf].dtype, loc)?;
                Ok(Stmt::Store { buf, index, value })
            }
        }
    }

    /// The dtype of `e` (variables by their declaration so far).
    fn dtype_of(&self, e: &Expr) -> DType {
        match e {
            Expr::Var(v) => self.declared[*v].unwrap_or(DType::I64),
            _ => e.dtype(&self.k),
        }
    }

    fn typed(&self, e: &Expr, want: DType, loc: Loc) -> Result<(), ParseError> {
        match self.dtype_of(e) {
            d if d == want => Ok(()),
            d => err(loc, format!("a {d} value where {want} is expected")),
        }
    }

    fn buffer(&self, name: &str, loc: Loc) -> Result<usize, ParseError> {
        self.k
            .bufs
            .iter()
            .position(|b| b.name == name)
            .ok_or_else(|| ParseError {
                loc,
                message: format!("unknown buffer `{name}`"),
            })
    }

    /// An i64 index expression.
    fn index(&mut self) -> Result<Expr, ParseError> {
        let loc = self.loc();
        let e = self.expr()?;
        self.typed(&e, DType::I64, loc)?;
        Ok(e)
    }

    /// The optional `name` and `sep` before an operand or argument of `routine`, which must
    /// name the one expected there.
    fn label(
        &mut self,
        routine: &str,
        want: &str,
        sep: char,
        what: &str,
    ) -> Result<(), ParseError> {
        if self.peek_at(1) == &Tok::Punct(sep) {
            let (n, l) = self.ident(what)?;
            if n != want {
                return err(
                    l,
                    format!("expected {what} `{want}` of `{routine}`, found `{n}`"),
                );
            }
            self.next();
        }
        Ok(())
    }

    /// A call after `call`; `result` is the variable (and its dtype) it is assigned to.
    fn call(&mut self, result: Option<(VarId, DType)>) -> Result<Call, ParseError> {
        let (name, loc) = self.ident("a routine")?;
        let r = crate::routines::routine(&name).ok_or_else(|| ParseError {
            loc,
            message: format!("unknown routine `{name}`"),
        })?;
        self.expect('(')?;
        let mut operands = Vec::new();
        while !self.eat(';') {
            if !operands.is_empty() {
                self.expect(',')?;
            }
            let at = self.loc();
            let Some(&(want, _, _)) = r.operands.get(operands.len()) else {
                return err(at, format!("`{name}` takes {} operands", r.operands.len()));
            };
            self.label(&name, want, ':', "operand")?;
            if self.eat('-') {
                operands.push(None);
                continue;
            }
            let (b, l) = self.ident("a buffer")?;
            let buf = self.buffer(&b, l)?;
            self.expect('[')?;
            let off = self.index()?;
            self.expect(']')?;
            operands.push(Some((buf, off)));
        }
        if operands.len() != r.operands.len() {
            return err(
                loc,
                format!(
                    "`{name}` takes {} operands, not {}",
                    r.operands.len(),
                    operands.len()
                ),
            );
        }
        let (mut ints, mut scalars) = (Vec::new(), Vec::new());
        while !self.eat(')') {
            let at = self.loc();
            if let Some(&want) = r.ints.get(ints.len()) {
                self.label(&name, want, '=', "argument")?;
                ints.push(self.index()?);
                continue;
            }
            let Some(&(want, dtype)) = r.scalars.get(scalars.len()) else {
                return err(
                    at,
                    format!(
                        "`{name}` takes {} integers and {} scalars",
                        r.ints.len(),
                        r.scalars.len()
                    ),
                );
            };
            self.label(&name, want, '=', "argument")?;
            let x = self.expr()?;
            self.typed(&x, dtype, at)?;
            scalars.push(x);
        }
        if let (Some((_, d)), Some(want)) = (result, r.result) {
            if d != want {
                return err(loc, format!("`{name}` gives {want}, assigned to a {d}"));
            }
        }
        let c = Call {
            routine: name,
            operands,
            ints,
            scalars,
            result: result.map(|(v, _)| v),
        };
        c.checked()
            .or_else(|m| err(loc, format!("a call of {m}")))?;
        Ok(c)
    }

    fn expr(&mut self) -> Result<Expr, ParseError> {
        self.nest()?;
        let e = self.expr_inner();
        self.depth -= 1;
        e
    }

    fn expr_inner(&mut self) -> Result<Expr, ParseError> {
        let (t, loc) = self.next();
        match t {
            Tok::Punct('(') => {
                let a = self.index()?;
                let op = match self.next() {
                    (Tok::Punct('+'), _) => Op::Add,
                    (Tok::Punct('*'), _) => Op::Mul,
                    (t, l) => return err(l, format!("expected `+` or `*`, found {t}")),
                };
                let b = self.index()?;
                self.expect(')')?;
                Ok(Expr::Op {
                    op,
                    args: vec![a, b],
                    dtype: DType::I64,
                })
            }
            Tok::Punct('{') => {
                let d = self.dim('}')?;
                let k = match self.k.dims.iter().position(|x| *x == d) {
                    Some(k) => k,
                    None => {
                        self.k.dims.push(d);
                        self.k.dims.len() - 1
                    }
                };
                Ok(Expr::Dim(k))
            }
            Tok::Punct('-') => match self.next() {
                (Tok::Num(s), _) => self.literal(&format!("-{s}"), loc),
                (Tok::Ident(s), _) if s == "inf" => self.literal("-inf", loc),
                (t, l) => err(l, format!("expected a number after `-`, found {t}")),
            },
            Tok::Num(s) => self.literal(&s, loc),
            Tok::Ident(s) if s == "true" || s == "false" => {
                Ok(Expr::Int(i64::from(s == "true"), DType::Bool))
            }
            Tok::Ident(s) if (s == "inf" || s == "NaN") && self.peek() == &Tok::Punct(':') => {
                self.literal(&s, loc)
            }
            Tok::Ident(s) if self.peek() == &Tok::Punct('[') => {
                let buf = self.buffer(&s, loc)?;
                self.next();
                let index = self.index()?;
                self.expect(']')?;
                Ok(Expr::Load {
                    buf,
                    index: Box::new(index),
                })
            }
            Tok::Ident(s)
                if s.starts_with('v')
                    && s.len() > 1
                    && s[1..].bytes().all(|b| b.is_ascii_digit()) =>
            {
                let v = self.var(&s, loc)?;
                match self.declared.get(v) {
                    Some(Some(_)) => Ok(Expr::Var(v)),
                    _ => err(loc, format!("v{v} is used before it is defined")),
                }
            }
            Tok::Ident(s) => self.op(&s, loc),
            t => err(loc, format!("expected an expression, found {t}")),
        }
    }

    /// A number (`s` with its sign) and its optional `:dtype`.
    fn literal(&mut self, s: &str, loc: Loc) -> Result<Expr, ParseError> {
        let dtype = match self.eat(':') {
            true => Some(self.dtype()?),
            false => None,
        };
        let float = s.contains(['.', 'e', 'E', 'i', 'N']);
        match (float, dtype) {
            (false, d) => {
                let v: i64 = s
                    .parse()
                    .or_else(|_| err(loc, format!("`{s}` overflows i64")))?;
                if d == Some(DType::Bool) && !(0..=1).contains(&v) {
                    return err(loc, format!("a bool is 0 or 1, not {v}"));
                }
                Ok(Expr::Int(v, d.unwrap_or(DType::I64)))
            }
            (true, Some(d)) if !d.is_float() => err(loc, format!("the float `{s}` is not a {d}")),
            (true, Some(d)) => {
                let v: f64 = s
                    .parse()
                    .or_else(|_| err(loc, format!("bad number `{s}`")))?;
                Ok(Expr::Float(v, d))
            }
            (true, None) => err(loc, format!("the float `{s}` needs a `:dtype`")),
        }
    }

    /// `mnemonic<dtype>{attrs}(args)`.
    fn op(&mut self, mnemonic: &str, loc: Loc) -> Result<Expr, ParseError> {
        if mnemonic != "cast" && *self.peek() == Tok::Punct('<') {
            return err(
                self.loc(),
                format!("only a cast names its dtype, not `{mnemonic}`"),
            );
        }
        let to = match self.eat('<') {
            true => {
                let d = self.dtype()?;
                self.expect('>')?;
                Some(d)
            }
            false => None,
        };
        let mut attrs = Vec::new();
        if self.eat('{') {
            while !self.eat('}') {
                if !attrs.is_empty() {
                    self.expect(',')?;
                }
                let (n, _) = self.ident("an attribute name")?;
                self.expect('=')?;
                let lit = match self.next() {
                    (Tok::Ident(s), _) => Lit::Ident(s),
                    (Tok::Num(s), _) => Lit::Num(s),
                    (t, l) => return err(l, format!("expected a literal, found {t}")),
                };
                attrs.push((n, lit));
            }
        }
        self.expect('(')?;
        let mut args = Vec::new();
        while !self.eat(')') {
            if !args.is_empty() {
                self.expect(',')?;
            }
            args.push(self.expr()?);
        }
        let results: Vec<TensorType> = to
            .map(|d| TensorType::new(d, Shape::scalar()))
            .into_iter()
            .collect();
        let ctx = AttrCtx {
            results: &results,
            constant: &|_| None,
            region: None,
        };
        let op = match Op::from_text(mnemonic, attrs, &ctx) {
            Ok(Some(op)) if op.is_elementwise() => op,
            Ok(Some(_)) => return err(loc, format!("`{mnemonic}` is not a scalar op")),
            Ok(None) => return err(loc, format!("unknown op `{mnemonic}`")),
            Err(m) => return err(loc, m),
        };
        let types: Vec<TensorType> = args
            .iter()
            .map(|a| TensorType::new(self.dtype_of(a), Shape::scalar()))
            .collect();
        let dtype = match (to, op.infer(&types)) {
            (Some(d), Ok(_)) => d,
            (None, Ok(r)) if r.len() == 1 => r[0].dtype,
            (_, Ok(_)) => return err(loc, format!("`{mnemonic}` has no single result")),
            (_, Err(m)) => return err(loc, format!("`{mnemonic}`: {m}")),
        };
        Ok(Expr::Op { op, args, dtype })
    }
}

fn empty(name: &str) -> Kernel {
    Kernel {
        name: name.into(),
        bufs: Vec::new(),
        dims: Vec::new(),
        vars: Vec::new(),
        body: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "\
kernel @k0(in in0: f32[8*n], in in1: f32[8], out out0: f32[8*n], scratch s0: f64[1]) {
  for v0 in 0..{n} parallel {
    for v1 in 0..8 vector(4) {
      out0[((v0 * 8) + v1)] = max(add(in0[((v0 * 8) + v1)], in1[v1]), 0.0:f32)
    }
  }
  v2: f64 = 0.0:f64
  for v3 in 0..{8*n} {
    v2: f64 = add(v2, cast<f64>(in0[v3]))
  }
  s0[0] = v2
  check lt(1, {n}) else 1
  out0[0] = select(gt(v2, -inf:f64), cast<f32>{saturate=false}(v2), NaN:f32)
  call gemm(a: in0[0], b: in1[0], b_packed: -, c: out0[8], scale: -, shift: in1[0], res: -, scale2: -; a_rs=1 a_cs=1 b_rs=1 b_cs=1 c_rs=1 m=1 n=1 k=1 cols=0 act=0 lo=0.0:f32 hi=inf:f32 pre_s=0.0:f32 pre_z=0.0:f32 pre_lo=0.0:f32 pre_hi=0.0:f32 pre_d=0.0:f32 pre_at=0.0:f32 post_s=0.0:f32 post_z=0.0:f32 post_lo=0.0:f32 post_hi=0.0:f32 post_d=0.0:f32)
}";

    #[test]
    fn kernels_round_trip_through_text() {
        let k = parse_kernel(TEXT).unwrap();
        assert_eq!(k.to_string(), TEXT);
        assert_eq!(k.dims.len(), 2);
        assert_eq!(k.vars, vec![DType::I64, DType::I64, DType::F64, DType::I64]);
        let Stmt::Loop { body, .. } = &k.body[2] else {
            panic!("a loop")
        };
        let Stmt::Set { value, .. } = &body[0] else {
            panic!("a set")
        };
        assert_eq!(value.dtype(&k), DType::F64);
    }

    #[test]
    fn errors_have_positions() {
        let e = |t: &str| parse_kernels(t).unwrap_err().to_string();
        assert_eq!(
            e("kernel @k(in x: f32[n]) {\n  y[0] = x[0]\n}"),
            "2:3: unknown buffer `y`"
        );
        assert_eq!(
            e("kernel @k(in x: f32[n], out y: i32[n]) {\n  y[0] = x[0]\n}"),
            "2:3: a f32 value where i32 is expected"
        );
        assert_eq!(
            e("kernel @k(out y: f32[n]) {\n  y[v0] = 1.0:f32\n}"),
            "2:5: v0 is used before it is defined"
        );
        assert_eq!(
            e("kernel @k(out y: f32[n+]) {\n}"),
            "1:24: expected a number, name or `(`, found end of input"
        );
        assert_eq!(
            e("kernel @k(out y: f32[n]) {\n  y[0] = frob(1.0:f32)\n}"),
            "2:10: unknown op `frob`"
        );
        assert_eq!(
            e("kernel @k(out y: f32[n]) {\n  call gemm(y[0]; m=1)\n}"),
            "2:8: `gemm` takes 8 operands, not 1"
        );
        assert!(e("kernel @k() {\n}\nkernel @k() {\n}").contains("defined twice"));
        // What the interpreter and backends would read differently is refused.
        let one = |stmt: &str| {
            e(&format!(
                "kernel @k(out y: i64[1], out b: bool[1]) {{\n  {stmt}\n}}"
            ))
        };
        assert!(one("y[0] = add(select<i64>(true, 1.0:f32, 2.0:f32), 1)").contains("only a cast"));
        assert!(one("b[0] = 5:bool").contains("a bool is 0 or 1"));
        assert!(one("y[0] = 1.5:i64").contains("is not a i64"));
        assert!(one("check lt(1, 2) else 0").contains("nonzero code"));
        assert!(one("check 1 else 1").contains("a i64 value where bool is expected"));
        assert!(one("for v0 in 0..1.5:f32 {\n}").contains("where i64 is expected"));
        // Dims print floor division as `/`.
        let k = parse_kernel("kernel @k(in x: f32[(n+1)/2]) {\n}").unwrap();
        assert_eq!(k.to_string(), "kernel @k(in x: f32[(n+1)/2]) {\n}");
        let deep = format!(
            "kernel @k(out y: i64[1]) {{\n  y[0] = {}1{}\n}}",
            "neg(".repeat(1000),
            ")".repeat(1000)
        );
        assert!(e(&deep).contains("too deep"));
    }
}
