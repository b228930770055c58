//! The `.kir` parser. Errors carry `line:col`. The parser checks syntax, names and op arity;
//! types are checked by the verifier, which reports the text position each node came from.
//!
//! Grammar (`;` starts a comment that runs to the end of the line):
//!
//! ```text
//! module   := (const | func)*
//! const    := "const" @name ":" type "=" literal
//! func     := "func" @name "{" stmt* "return" (ret ("," ret)*)? "}"
//! stmt     := %v ("," %v)* "=" mnemonic (%v ("," %v)*)? attrs? ":" type ("," type)* block?
//! block    := "{" stmt* "return" (ret ("," ret)*)? "}"      (the region of a `fused` kernel)
//! ret      := %v ("as" "string")?
//! attrs    := "{" (ident "=" literal ("," ident "=" literal)*)? "}"
//! type     := dtype "[" (dim ("," dim)*)? "]"
//! dim      := integer and symbol expression with + - * / (floor) mod, min(a, b) and
//!             parentheses
//! literal  := number | ident | "string" | @name | dim | "[" (literal ("," literal)*)? "]"
//! ```

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use crate::attr::{tensor_from_lit, Attr, AttrCtx, Lit};
use crate::dim::Dim;
use crate::dtype::DType;
use crate::graph::{Graph, Loc, Origin, Value};
use crate::ops::Op;
use crate::print::default_output_name;
use crate::region::Region;
use crate::shape::{Shape, TensorType};
use crate::tensor::Tensor;

/// A syntax or name error, at a text position.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{loc}: {message}")]
pub struct ParseError {
    pub loc: Loc,
    pub message: String,
}

/// Where a function sits in the text: from `func` to its closing brace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Span {
    pub start: Loc,
    pub end: Loc,
}

/// A parsed function and its position.
#[derive(Clone, Debug)]
pub struct Func {
    pub graph: Graph,
    pub span: Span,
}

/// Everything in one `.kir` text.
#[derive(Clone, Debug, Default)]
pub struct Module {
    pub funcs: Vec<Func>,
}

impl Module {
    pub fn graphs(&self) -> impl Iterator<Item = &Graph> {
        self.funcs.iter().map(|f| &f.graph)
    }
}

/// Parses every function and constant in `text`.
pub fn parse_module(text: &str) -> Result<Module, ParseError> {
    let tokens = lex(text)?;
    Parser {
        tokens,
        pos: 0,
        depth: 0,
        consts: BTreeMap::new(),
    }
    .module()
}

/// Parses a dimension expression as types print it (`8*n`, `min(a, b) + 1`); error positions
/// count from the start of `text`.
pub fn parse_dim(text: &str) -> Result<Dim, ParseError> {
    let mut p = Parser {
        tokens: lex(text)?,
        pos: 0,
        depth: 0,
        consts: BTreeMap::new(),
    };
    let loc = p.loc();
    let ex = p.expr()?;
    if *p.peek() != Tok::Eof {
        return err(
            p.loc(),
            format!("unexpected {} after a dimension", p.peek()),
        );
    }
    ex_to_dim(&ex).or_else(|m| err(loc, m))
}

/// Parses a text holding exactly one function.
pub fn parse_graph(text: &str) -> Result<Graph, ParseError> {
    let mut m = parse_module(text)?;
    match m.funcs.len() {
        1 => Ok(m.funcs.remove(0).graph),
        n => Err(ParseError {
            loc: Loc { line: 1, col: 1 },
            message: format!("expected exactly one function, found {n}"),
        }),
    }
}

#[derive(Clone, Debug, PartialEq)]
enum Tok {
    Ident(String),
    Num(String),
    Str(String),
    /// `%name`
    Val(String),
    /// `@name` or `@"name"`
    At(String),
    Punct(char),
    Eof,
}

impl fmt::Display for Tok {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Tok::Ident(s) | Tok::Num(s) => write!(f, "`{s}`"),
            Tok::Str(s) => write!(f, "string {s:?}"),
            Tok::Val(s) => write!(f, "`%{s}`"),
            Tok::At(s) => write!(f, "`@{s}`"),
            Tok::Punct(c) => write!(f, "`{c}`"),
            Tok::Eof => write!(f, "end of input"),
        }
    }
}

fn err<T>(loc: Loc, message: impl Into<String>) -> Result<T, ParseError> {
    Err(ParseError {
        loc,
        message: message.into(),
    })
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '.'
}

struct Lexer<'a> {
    chars: std::iter::Peekable<std::str::Chars<'a>>,
    loc: Loc,
}

impl Lexer<'_> {
    fn bump(&mut self) -> Option<char> {
        let c = self.chars.next()?;
        if c == '\n' {
            self.loc.line += 1;
            self.loc.col = 1;
        } else {
            self.loc.col += 1;
        }
        Some(c)
    }

    fn take_while(&mut self, f: impl Fn(char) -> bool) -> String {
        let mut s = String::new();
        while let Some(&c) = self.chars.peek() {
            if !f(c) {
                break;
            }
            s.push(c);
            self.bump();
        }
        s
    }

    fn string(&mut self, start: Loc) -> Result<String, ParseError> {
        let mut s = String::new();
        loop {
            match self.bump() {
                None | Some('\n') => return err(start, "unterminated string"),
                Some('"') => return Ok(s),
                Some('\\') => {
                    let at = self.loc;
                    match self.bump() {
                        Some('"') => s.push('"'),
                        Some('\\') => s.push('\\'),
                        Some('n') => s.push('\n'),
                        Some('t') => s.push('\t'),
                        Some('u') if self.chars.peek() == Some(&'{') => {
                            self.bump();
                            let hex = self.take_while(|c| c.is_ascii_hexdigit());
                            let c = u32::from_str_radix(&hex, 16).ok().and_then(char::from_u32);
                            match (c, self.bump()) {
                                (Some(c), Some('}')) => s.push(c),
                                _ => return err(at, "invalid \\u{...} escape"),
                            }
                        }
                        _ => return err(at, "invalid escape in string"),
                    }
                }
                Some(c) => s.push(c),
            }
        }
    }

    fn number(&mut self) -> String {
        let mut s = self.take_while(|c| c.is_ascii_digit());
        let mut look = self.chars.clone();
        if look.next() == Some('.') && look.next().is_some_and(|c| c.is_ascii_digit()) {
            self.bump();
            s.push('.');
            s.push_str(&self.take_while(|c| c.is_ascii_digit()));
        }
        let mut look = self.chars.clone();
        if matches!(look.next(), Some('e' | 'E')) {
            let mut next = look.next();
            let signed = matches!(next, Some('+' | '-'));
            if signed {
                next = look.next();
            }
            if next.is_some_and(|c| c.is_ascii_digit()) {
                s.push(self.bump().unwrap_or('e'));
                if signed {
                    s.push(self.bump().unwrap_or('+'));
                }
                s.push_str(&self.take_while(|c| c.is_ascii_digit()));
            }
        }
        s
    }
}

fn lex(text: &str) -> Result<Vec<(Tok, Loc)>, ParseError> {
    let mut lx = Lexer {
        chars: text.chars().peekable(),
        loc: Loc { line: 1, col: 1 },
    };
    let mut out = Vec::new();
    while let Some(&c) = lx.chars.peek() {
        let start = lx.loc;
        let tok = match c {
            c if c.is_whitespace() => {
                lx.bump();
                continue;
            }
            ';' => {
                lx.take_while(|c| c != '\n');
                continue;
            }
            c if c.is_ascii_alphabetic() || c == '_' => Tok::Ident(lx.take_while(is_name_char)),
            c if c.is_ascii_digit() => Tok::Num(lx.number()),
            '"' => {
                lx.bump();
                Tok::Str(lx.string(start)?)
            }
            '%' => {
                lx.bump();
                let name = lx.take_while(is_name_char);
                if name.is_empty() {
                    return err(start, "expected a value name after `%`");
                }
                Tok::Val(name)
            }
            '@' => {
                lx.bump();
                let name = if lx.chars.peek() == Some(&'"') {
                    let at = lx.loc;
                    lx.bump();
                    lx.string(at)?
                } else {
                    lx.take_while(is_name_char)
                };
                if name.is_empty() {
                    return err(start, "expected a name after `@`");
                }
                Tok::At(name)
            }
            '=' | ':' | ',' | '{' | '}' | '[' | ']' | '(' | ')' | '+' | '-' | '*' | '/' => {
                lx.bump();
                Tok::Punct(c)
            }
            '.' if lx.chars.clone().take(3).collect::<String>() == "..." => {
                return err(
                    start,
                    "constant data was elided when this text was printed; print it in full \
                     (`kiln opt --full`, or `-o FILE`) to parse it",
                )
            }
            other => return err(start, format!("unexpected character {other:?}")),
        };
        out.push((tok, start));
    }
    out.push((Tok::Eof, lx.loc));
    Ok(out)
}

/// Expressions in dims and attribute literals, before we know which they are.
enum Ex {
    Num(String),
    Ident(String),
    Neg(Box<Ex>),
    Bin(char, Box<Ex>, Box<Ex>),
}

/// Bounds the nesting of lists and the depth of expressions, so hostile input cannot overflow
/// the stack.
const MAX_DEPTH: usize = 256;

struct Parser {
    tokens: Vec<(Tok, Loc)>,
    pos: usize,
    depth: usize,
    consts: BTreeMap<String, Tensor>,
}

impl Parser {
    fn peek(&self) -> &Tok {
        &self.tokens[self.pos].0
    }

    fn loc(&self) -> Loc {
        self.tokens[self.pos].1
    }

    fn next(&mut self) -> (Tok, Loc) {
        let t = self.tokens[self.pos].clone();
        if self.pos + 1 < self.tokens.len() {
            self.pos += 1;
        }
        t
    }

    fn eat(&mut self, c: char) -> bool {
        if *self.peek() == Tok::Punct(c) {
            self.next();
            true
        } else {
            false
        }
    }

    fn expect(&mut self, c: char) -> Result<Loc, ParseError> {
        let (t, loc) = self.next();
        if t == Tok::Punct(c) {
            Ok(loc)
        } else {
            err(loc, format!("expected `{c}`, found {t}"))
        }
    }

    fn is_keyword(&self, kw: &str) -> bool {
        matches!(self.peek(), Tok::Ident(s) if s == kw)
    }

    fn ident(&mut self, what: &str) -> Result<(String, Loc), ParseError> {
        match self.next() {
            (Tok::Ident(s), loc) => Ok((s, loc)),
            (t, loc) => err(loc, format!("expected {what}, found {t}")),
        }
    }

    fn at_name(&mut self, what: &str) -> Result<(String, Loc), ParseError> {
        match self.next() {
            (Tok::At(s), loc) => Ok((s, loc)),
            (t, loc) => err(loc, format!("expected {what}, found {t}")),
        }
    }

    fn nest(&mut self) -> Result<(), ParseError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return err(self.loc(), "nesting is too deep");
        }
        Ok(())
    }

    fn module(mut self) -> Result<Module, ParseError> {
        let mut funcs: Vec<Func> = Vec::new();
        loop {
            match self.peek().clone() {
                Tok::Eof => return Ok(Module { funcs }),
                Tok::Ident(kw) if kw == "func" => {
                    let f = self.func()?;
                    if funcs.iter().any(|g| g.graph.name() == f.graph.name()) {
                        return err(
                            f.span.start,
                            format!("function @{} is defined twice", f.graph.name()),
                        );
                    }
                    funcs.push(f);
                }
                Tok::Ident(kw) if kw == "const" => self.const_def()?,
                t => return err(self.loc(), format!("expected `func` or `const`, found {t}")),
            }
        }
    }

    fn const_def(&mut self) -> Result<(), ParseError> {
        self.next();
        let (name, loc) = self.at_name("a constant name")?;
        self.expect(':')?;
        let ty = self.ty()?;
        self.expect('=')?;
        let lit_loc = self.loc();
        let lit = self.lit()?;
        let t = tensor_from_lit(&lit, &ty).or_else(|m| err(lit_loc, m))?;
        if self.consts.insert(name.clone(), t).is_some() {
            return err(loc, format!("constant @{name} is defined twice"));
        }
        Ok(())
    }

    fn func(&mut self) -> Result<Func, ParseError> {
        let (_, start) = self.next();
        let (name, _) = self.at_name("a function name")?;
        self.expect('{')?;
        let (graph, end) = self.body(&name, &format!("function @{name}"))?;
        Ok(Func {
            graph,
            span: Span { start, end },
        })
    }

    /// Statements and a `return` up to the closing brace (the opening one already read): a
    /// function's body or a kernel's region.
    fn body(&mut self, name: &str, what: &str) -> Result<(Graph, Loc), ParseError> {
        let mut g = Graph::new(name);
        let mut env: HashMap<String, (Value, Loc)> = HashMap::new();
        while !self.is_keyword("return") {
            if *self.peek() == Tok::Eof {
                return err(self.loc(), format!("{what} has no `return`"));
            }
            self.stmt(&mut g, &mut env)?;
        }
        self.next();
        let mut outputs = Vec::new();
        if !matches!(self.peek(), Tok::Punct('}')) {
            loop {
                let v = self.operand(&env)?;
                let oname = if self.is_keyword("as") {
                    self.next();
                    match self.next() {
                        (Tok::Str(s), _) => s,
                        (t, loc) => return err(loc, format!("expected an output name, found {t}")),
                    }
                } else {
                    default_output_name(outputs.len())
                };
                outputs.push((oname, v));
                if !self.eat(',') {
                    break;
                }
            }
        }
        let end = self.expect('}')?;
        g.set_outputs(outputs)
            .or_else(|e| err(end, e.to_string()))?;
        Ok((g, end))
    }

    fn operand(&mut self, env: &HashMap<String, (Value, Loc)>) -> Result<Value, ParseError> {
        match self.next() {
            (Tok::Val(v), loc) => match env.get(&v) {
                Some((val, _)) => Ok(*val),
                None => err(loc, format!("undefined value %{v}")),
            },
            (t, loc) => err(loc, format!("expected a value, found {t}")),
        }
    }

    fn stmt(
        &mut self,
        g: &mut Graph,
        env: &mut HashMap<String, (Value, Loc)>,
    ) -> Result<(), ParseError> {
        let mut results = Vec::new();
        loop {
            match self.next() {
                (Tok::Val(v), loc) => results.push((v, loc)),
                (t, loc) => {
                    return err(loc, format!("expected a value name or `return`, found {t}"))
                }
            }
            if !self.eat(',') {
                break;
            }
        }
        self.expect('=')?;
        let (mnemonic, op_loc) = self.ident("an op name")?;
        let mut inputs = Vec::new();
        if matches!(self.peek(), Tok::Val(_)) {
            loop {
                inputs.push(self.operand(env)?);
                if !self.eat(',') {
                    break;
                }
            }
        }
        let attr_loc = self.loc();
        let attrs = if *self.peek() == Tok::Punct('{') {
            self.attrs()?
        } else {
            Vec::new()
        };
        self.expect(':')?;
        let mut types = vec![self.ty()?];
        while self.eat(',') {
            types.push(self.ty()?);
        }
        if types.len() != results.len() {
            return err(
                op_loc,
                format!(
                    "{} result{} but {} type{}",
                    results.len(),
                    if results.len() == 1 { "" } else { "s" },
                    types.len(),
                    if types.len() == 1 { "" } else { "s" }
                ),
            );
        }
        // A kernel's region follows its type as a block.
        let region = if *self.peek() == Tok::Punct('{') {
            let block = self.loc();
            if !matches!(mnemonic.as_str(), "fused" | "loop") {
                return err(block, format!("`{mnemonic}` takes no body block"));
            }
            self.nest()?;
            self.next();
            let (body, _) = self.body("body", &format!("a `{mnemonic}` body"))?;
            self.depth -= 1;
            Some(Region::new(body))
        } else {
            None
        };
        let consts = &self.consts;
        let lookup = |n: &str| consts.get(n).cloned();
        let ctx = AttrCtx {
            results: &types,
            constant: &lookup,
            region,
        };
        let op = match Op::from_text(&mnemonic, attrs, &ctx) {
            Ok(Some(op)) => op,
            Ok(None) => return err(op_loc, format!("unknown op `{mnemonic}`")),
            Err(m) => return err(attr_loc, m),
        };
        if !op.arity().accepts(inputs.len()) {
            return err(
                op_loc,
                format!("`{mnemonic}` takes {}, got {}", op.arity(), inputs.len()),
            );
        }
        let id = g
            .add_node(op, inputs, types, Origin::at(op_loc))
            .or_else(|e| err(op_loc, e.to_string()))?;
        for (i, (name, loc)) in results.into_iter().enumerate() {
            if let Some((_, prev)) = env.get(&name) {
                return err(loc, format!("value %{name} is already defined at {prev}"));
            }
            env.insert(name, (Value::new(id, i as u32), loc));
        }
        Ok(())
    }

    fn attrs(&mut self) -> Result<Vec<(String, Lit)>, ParseError> {
        self.expect('{')?;
        let mut out: Vec<(String, Lit)> = Vec::new();
        if self.eat('}') {
            return Ok(out);
        }
        loop {
            let (name, loc) = self.ident("an attribute name")?;
            if out.iter().any(|(n, _)| *n == name) {
                return err(loc, format!("attribute `{name}` is given twice"));
            }
            self.expect('=')?;
            out.push((name, self.lit()?));
            if !self.eat(',') {
                break;
            }
        }
        self.expect('}')?;
        Ok(out)
    }

    fn ty(&mut self) -> Result<TensorType, ParseError> {
        let (name, loc) = self.ident("a type")?;
        let dtype = DType::from_name(&name)
            .map_or_else(|| err(loc, format!("unknown dtype `{name}`")), Ok)?;
        self.expect('[')?;
        let mut dims = Vec::new();
        if !self.eat(']') {
            loop {
                let at = self.loc();
                let ex = self.expr()?;
                dims.push(ex_to_dim(&ex).or_else(|m| err(at, m))?);
                if !self.eat(',') {
                    break;
                }
            }
            self.expect(']')?;
        }
        Ok(TensorType::new(dtype, Shape::new(dims)))
    }

    fn lit(&mut self) -> Result<Lit, ParseError> {
        let loc = self.loc();
        match self.peek().clone() {
            Tok::Punct('[') => {
                self.nest()?;
                self.next();
                let mut items = Vec::new();
                if !self.eat(']') {
                    loop {
                        items.push(self.lit()?);
                        if !self.eat(',') {
                            break;
                        }
                    }
                    self.expect(']')?;
                }
                self.depth -= 1;
                Ok(Lit::List(items))
            }
            Tok::Str(s) => {
                self.next();
                Ok(Lit::Str(s))
            }
            Tok::At(s) => {
                self.next();
                Ok(Lit::Ref(s))
            }
            _ => {
                let ex = self.expr()?;
                match ex {
                    Ex::Num(s) => Ok(Lit::Num(s)),
                    Ex::Ident(s) => Ok(Lit::Ident(s)),
                    Ex::Neg(inner) if matches!(&*inner, Ex::Num(..)) => match *inner {
                        Ex::Num(s) => Ok(Lit::Num(format!("-{s}"))),
                        _ => unreachable!("matched a number"),
                    },
                    Ex::Neg(inner) if matches!(&*inner, Ex::Ident(s) if s == "inf") => {
                        Ok(Lit::Num("-inf".into()))
                    }
                    _ => ex_to_dim(&ex).map(|d| d.to_lit()).or_else(|m| err(loc, m)),
                }
            }
        }
    }

    fn expr(&mut self) -> Result<Ex, ParseError> {
        self.nest()?;
        let mut extra = 0;
        let mut lhs = self.term()?;
        while let &Tok::Punct(op @ ('+' | '-')) = self.peek() {
            self.next();
            self.nest()?;
            extra += 1;
            let rhs = self.term()?;
            lhs = Ex::Bin(op, Box::new(lhs), Box::new(rhs));
        }
        self.depth -= 1 + extra;
        Ok(lhs)
    }

    fn term(&mut self) -> Result<Ex, ParseError> {
        let mut extra = 0;
        let mut lhs = self.unary()?;
        loop {
            let op = match self.peek() {
                Tok::Punct(c @ ('*' | '/')) => *c,
                Tok::Ident(s) if s == "mod" => '%',
                _ => break,
            };
            self.next();
            self.nest()?;
            extra += 1;
            let rhs = self.unary()?;
            lhs = Ex::Bin(op, Box::new(lhs), Box::new(rhs));
        }
        self.depth -= extra;
        Ok(lhs)
    }

    fn unary(&mut self) -> Result<Ex, ParseError> {
        if self.eat('-') {
            self.nest()?;
            let inner = self.unary()?;
            self.depth -= 1;
            return Ok(Ex::Neg(Box::new(inner)));
        }
        match self.next() {
            (Tok::Num(s), _) => Ok(Ex::Num(s)),
            (Tok::Ident(s), _) if s == "min" && *self.peek() == Tok::Punct('(') => {
                self.expect('(')?;
                let a = self.expr()?;
                self.expect(',')?;
                let b = self.expr()?;
                self.expect(')')?;
                Ok(Ex::Bin('m', Box::new(a), Box::new(b)))
            }
            (Tok::Ident(s), _) => Ok(Ex::Ident(s)),
            (Tok::Punct('('), _) => {
                let e = self.expr()?;
                self.expect(')')?;
                Ok(e)
            }
            (t, loc) => err(loc, format!("expected a number, name or `(`, found {t}")),
        }
    }
}

fn ex_to_dim(ex: &Ex) -> Result<Dim, String> {
    let overflow = |e: crate::dim::DimError| e.to_string();
    match ex {
        Ex::Num(s) => s.parse::<i64>().map(Dim::Const).map_err(|_| {
            if s.bytes().all(|b| b.is_ascii_digit()) {
                format!("dimension {s} overflows i64")
            } else {
                format!("dimension `{s}` is not an integer")
            }
        }),
        Ex::Ident(s) if crate::dim::is_valid_symbol(s) => Ok(Dim::sym(s)),
        Ex::Ident(s) => Err(format!("`{s}` cannot name a dimension")),
        Ex::Neg(x) => ex_to_dim(x)?.neg().map_err(overflow),
        Ex::Bin(op, a, b) => {
            let (a, b) = (ex_to_dim(a)?, ex_to_dim(b)?);
            match op {
                '+' => a.add(&b),
                '-' => a.sub(&b),
                '*' => a.mul(&b),
                '/' => a.floor_div(&b),
                'm' => a.minimum(&b),
                _ => a.floor_mod(&b),
            }
            .map_err(overflow)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_err(text: &str) -> String {
        parse_module(text).unwrap_err().to_string()
    }

    #[test]
    fn parses_a_function() {
        let g = parse_graph(
            "func @f {\n  %x = param {name=\"x\"} : f32[batch, 2*seq]\n  %y = neg %x : f32[batch, seq*2]\n  return %y\n}\n",
        )
        .unwrap();
        assert_eq!(g.len(), 2);
        assert_eq!(g.outputs()[0].0, "out0");
        let ty = g.value_type(g.outputs()[0].1);
        assert_eq!(ty.to_string(), "f32[batch, 2*seq]");
    }

    #[test]
    fn errors_have_positions() {
        assert_eq!(
            parse_err("func @f {\n  %0 = frob : f32[]\n  return %0\n}"),
            "2:8: unknown op `frob`"
        );
        assert_eq!(
            parse_err("func @f {\n  %0 = neg %9 : f32[]\n  return %0\n}"),
            "2:12: undefined value %9"
        );
        assert_eq!(
            parse_err(
                "func @f {\n  %0 = param {name=\"x\"} : f32[99999999999999999999]\n  return %0\n}"
            ),
            "2:31: dimension 99999999999999999999 overflows i64"
        );
        assert_eq!(
            parse_err(
                "func @f {\n  %0 = param {name=\"x\"} : f32[4611686018427387904*2]\n  return %0\n}"
            ),
            "2:31: dimension arithmetic overflows i64"
        );
        assert_eq!(
            parse_err("func @f {\n  %0 = param {name=\"x\"} : f32[2]\n  %1 = add %0 : f32[2]\n  return %1\n}"),
            "3:8: `add` takes 2 operands, got 1"
        );
        assert_eq!(
            parse_err("func @f {\n  %0 = # "),
            "2:8: unexpected character '#'"
        );
        assert_eq!(parse_err("func @f {"), "1:10: function @f has no `return`");
    }

    #[test]
    fn constants_by_reference_share_data() {
        let text = "const @w : i32[3] = [1, 2, 3]\n\nfunc @f {\n  %0 = constant {value=@w} : i32[3]\n  return %0\n}\n";
        let g = parse_graph(text).unwrap();
        let v = g.outputs()[0].1;
        match g.node(v.node).op() {
            Op::Constant { value } => {
                assert_eq!(value.name.as_deref(), Some("w"));
                assert_eq!(value.tensor.as_slice::<i32>(), Some(&[1, 2, 3][..]));
            }
            other => panic!("expected a constant, got {other:?}"),
        }
        assert_eq!(
            parse_err("func @f {\n  %0 = constant {value=@nope} : i32[3]\n  return %0\n}"),
            "2:17: attribute `value`: undefined constant @nope"
        );
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_crash() {
        let deep = format!("const @c : f32[1] = {}", "[".repeat(100_000));
        assert!(parse_err(&deep).contains("nesting is too deep"));
        let deep = format!(
            "func @f {{ %0 = param {{name=\"x\"}} : f32[{}",
            "(".repeat(100_000)
        );
        assert!(parse_err(&deep).contains("nesting is too deep"));
        let long = format!(
            "func @f {{ %0 = param {{name=\"x\"}} : f32[{}1]",
            "1+".repeat(100_000)
        );
        assert!(parse_err(&long).contains("nesting is too deep"));
    }
}
